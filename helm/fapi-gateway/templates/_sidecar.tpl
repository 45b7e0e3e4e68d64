{{/*
Sidecar mode: templates a parent chart includes in its own pod spec, with this chart as a
dependency (see helm/README.md and helm/examples/sidecar-app). Pass the subchart's scope:

  containers:
    - name: app   # listens on 127.0.0.1:<sidecar.appPort>
      ...
    {{- include "fapi-gateway.sidecar.containers" (index .Subcharts "fapi-gateway") | nindent 4 }}
  volumes:
    {{- include "fapi-gateway.sidecar.volumes" (index .Subcharts "fapi-gateway") | nindent 4 }}
*/}}
{{- define "fapi-gateway.sidecar.containers" -}}
{{- if ne .Values.mode "sidecar" }}
{{- fail "fapi-gateway.sidecar.containers needs mode: sidecar" }}
{{- end }}
{{- include "fapi-gateway.container" . }}
{{- end }}

{{- define "fapi-gateway.sidecar.volumes" -}}
{{- include "fapi-gateway.volumes" . }}
{{- end }}

{{/* Pod annotations (config checksum) for the application's pod template. */}}
{{- define "fapi-gateway.sidecar.podAnnotations" -}}
{{- include "fapi-gateway.podAnnotations" . }}
{{- end }}

{{/* Termination grace the application's pod needs so that the gateway can drain. */}}
{{- define "fapi-gateway.sidecar.terminationGracePeriodSeconds" -}}
{{- include "fapi-gateway.terminationGracePeriodSeconds" . }}
{{- end }}
