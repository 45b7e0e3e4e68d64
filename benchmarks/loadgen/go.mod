module gatewaybench/loadgen

go 1.19
