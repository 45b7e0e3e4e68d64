{{/* Names and labels ------------------------------------------------------------------- */}}
{{- define "fapi-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fapi-gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "fapi-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fapi-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "fapi-gateway.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "fapi-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "fapi-gateway.labels" -}}
{{ include "fapi-gateway.commonLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{/* The pods that carry the gateway: ours (standalone) or the application's (sidecar). */}}
{{- define "fapi-gateway.podSelector" -}}
{{- if eq .Values.mode "sidecar" }}
{{- required "sidecar.podSelector: give the labels of the application's pods" (.Values.sidecar.podSelector | default nil) | toYaml }}
{{- else }}
{{- include "fapi-gateway.selectorLabels" . }}
{{- end }}
{{- end }}

{{- define "fapi-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fapi-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "fapi-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The DPoP replay store (RFC 9449 §11.1) -------------------------------------------------
     "true" when the chart's redis: values name a Redis; "" otherwise. */}}
{{- define "fapi-gateway.chartRedis" -}}
{{- $r := .Values.redis }}
{{- $given := 0 }}
{{- if $r.url }}{{ $given = add1 $given }}{{ end }}
{{- if $r.existingSecret }}{{ $given = add1 $given }}{{ end }}
{{- if $r.sentinel.hosts }}{{ $given = add1 $given }}{{ end }}
{{- if gt $given 1 }}
{{- fail "redis: give one of redis.url, redis.sentinel.hosts or redis.existingSecret" }}
{{- end }}
{{- if and $r.sentinel.hosts (not $r.sentinel.serviceName) }}
{{- fail "redis.sentinel.serviceName: required with redis.sentinel.hosts" }}
{{- end }}
{{- if $given }}true{{ end }}
{{- end }}

{{/* "true" when every gateway process shares one replay store: Redis from the chart's values
     or from config.dpop.replay. */}}
{{- define "fapi-gateway.sharedReplay" -}}
{{- if or (include "fapi-gateway.chartRedis" .) (eq (dig "dpop" "replay" "backend" "" (.Values.config | default dict)) "redis") }}true{{ end }}
{{- end }}

{{/* More than one gateway process with per-process replay stores would accept a captured DPoP
     proof once per process: refuse to render that. */}}
{{- define "fapi-gateway.checkReplayStore" -}}
{{- if not (include "fapi-gateway.sharedReplay" .) }}
{{- $why := "" }}
{{- if gt (int .Values.workers) 1 }}
{{- $why = printf "workers: %d" (int .Values.workers) }}
{{- else if eq .Values.mode "sidecar" }}
{{- if not .Values.sidecar.allowInMemoryReplayStore }}
{{- $why = "mode: sidecar (the workload's replica count is not known here)" }}
{{- end }}
{{- else if .Values.autoscaling.enabled }}
{{- $why = "autoscaling.enabled" }}
{{- else if gt (int .Values.replicaCount) 1 }}
{{- $why = printf "replicaCount: %d" (int .Values.replicaCount) }}
{{- end }}
{{- if $why }}
{{- fail (printf "%s needs a shared DPoP replay store: set redis.url, redis.sentinel or redis.existingSecret (each gateway process would otherwise keep its own, and a captured DPoP proof could be replayed once per process)" $why) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "fapi-gateway.nonceSecretName" -}}
{{- .Values.dpopNonce.existingSecret | default (printf "%s-dpop-nonce" (include "fapi-gateway.fullname" .)) }}
{{- end }}

{{/* The gateway YAML: the user's config with the chart-owned keys filled in. -------------- */}}
{{- define "fapi-gateway.gatewayConfig" -}}
{{- if not (has .Values.mode (list "standalone" "sidecar" "decision")) }}
{{- fail (printf "mode must be standalone, sidecar or decision, not %q" .Values.mode) }}
{{- end }}
{{- include "fapi-gateway.checkReplayStore" . }}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- /* decision: the proxies (Envoy/Istio, nginx, Traefik) forward, the gateway only decides;
       its own proxy listener stays on loopback, reachable by nothing outside the pod. */}}
{{- $listen := dict "host" (ternary "127.0.0.1" "0.0.0.0" (eq .Values.mode "decision")) "port" (int .Values.ports.https) }}
{{- if .Values.tls.enabled }}
{{- $tls := dict "cert" "/etc/gateway/tls/tls.crt" "key" "/etc/gateway/tls/tls.key" "client_auth" .Values.tls.clientAuth "profile" .Values.tls.profile }}
{{- if .Values.tls.clientCA.secretName }}
{{- $_ := set $tls "client_ca" (list (printf "/etc/gateway/client-ca/%s" .Values.tls.clientCA.key)) }}
{{- end }}
{{- $_ := set $listen "tls" $tls }}
{{- end }}
{{- $_ := set $cfg "listen" (merge $listen ($cfg.listen | default dict)) }}
{{- /* Probes come from the kubelet on the pod IP: the admin port listens there only (env POD_IP
       from the downward API), not on every interface, and no Service exposes it; the
       NetworkPolicy admits it from adminFrom only. */}}
{{- $admin := dict "host" "${POD_IP}" "port" (int .Values.ports.admin) }}
{{- /* The revocation admin API (off without a token): the token comes from a Secret, never a value. */}}
{{- if .Values.adminToken.existingSecret }}
{{- $_ := set $admin "token" "${GATEWAY_ADMIN_TOKEN}" }}
{{- end }}
{{- $_ := set $cfg "admin" $admin }}
{{- if eq .Values.mode "sidecar" }}
{{- $ups := $cfg.upstreams | default dict }}
{{- $_ := set $ups "app" (merge (dict "url" (printf "http://127.0.0.1:%d" (int .Values.sidecar.appPort))) ($ups.app | default dict)) }}
{{- $_ := set $cfg "upstreams" $ups }}
{{- end }}
{{- if eq .Values.mode "decision" }}
{{- $d := $cfg.decision | default dict }}
{{- $_ := set $d "grpc" (merge (dict "host" "0.0.0.0" "port" (int .Values.ports.decisionGrpc)) ($d.grpc | default dict)) }}
{{- $_ := set $d "http" (merge (dict "host" "0.0.0.0" "port" (int .Values.ports.decisionHttp)) ($d.http | default dict)) }}
{{- $_ := set $cfg "decision" $d }}
{{- end }}
{{- $life := $cfg.lifecycle | default dict }}
{{- $_ := set $life "workers" (int .Values.workers) }}
{{- $_ := set $life "shutdown_delay_s" .Values.shutdown.delaySeconds }}
{{- $_ := set $life "shutdown_grace_s" .Values.shutdown.graceSeconds }}
{{- $_ := set $cfg "lifecycle" $life }}
{{- $dpop := $cfg.dpop | default dict }}
{{- if include "fapi-gateway.chartRedis" . }}
{{- $r := .Values.redis }}
{{- $replay := $dpop.replay | default dict }}
{{- $redis := dict }}
{{- if $r.existingSecret }}
{{- $_ := set $redis "url" "${GATEWAY_REDIS_URL}" }}
{{- else if $r.url }}
{{- $_ := set $redis "url" $r.url }}
{{- else }}
{{- $_ := set $redis "mode" "sentinel" }}
{{- $_ := set $redis "sentinels" $r.sentinel.hosts }}
{{- $_ := set $redis "service_name" $r.sentinel.serviceName }}
{{- end }}
{{- if $r.passwordSecret.name }}
{{- $_ := set $redis "password" "${GATEWAY_REDIS_PASSWORD}" }}
{{- if and $r.sentinel.hosts $r.sentinel.authenticate }}
{{- $_ := set $redis "sentinel_password" "${GATEWAY_REDIS_PASSWORD}" }}
{{- end }}
{{- end }}
{{- if $r.keyPrefix }}
{{- $_ := set $redis "key_prefix" $r.keyPrefix }}
{{- end }}
{{- $_ := set $replay "backend" "redis" }}
{{- $_ := set $replay "redis" (merge $redis ($replay.redis | default dict)) }}
{{- $_ := set $dpop "replay" $replay }}
{{- end }}
{{- if .Values.dpopNonce.enabled }}
{{- /* One key for every pod (DPOPN-09), from one Secret; never in this ConfigMap. */}}
{{- $_ := set $dpop "nonce" (merge (dict "secrets" (list "${GATEWAY_DPOP_NONCE_SECRET}")) ($dpop.nonce | default dict)) }}
{{- end }}
{{- if $dpop }}
{{- $_ := set $cfg "dpop" $dpop }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* The gateway container: shared by the standalone Deployment and the sidecar snippet. --- */}}
{{- define "fapi-gateway.container" -}}
- name: fapi-gateway
  image: {{ include "fapi-gateway.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: [run, --config, /etc/gateway/config/gateway.yaml]
  env:
    - name: PYTHONUNBUFFERED
      value: "1"
    # The admin listener binds the pod IP (what kubelet probes reach), see gatewayConfig.
    - name: POD_IP
      valueFrom:
        fieldRef:
          fieldPath: status.podIP
    {{- if .Values.redis.existingSecret }}
    - name: GATEWAY_REDIS_URL
      valueFrom:
        secretKeyRef:
          name: {{ .Values.redis.existingSecret }}
          key: {{ .Values.redis.key }}
    {{- end }}
    {{- if and (include "fapi-gateway.chartRedis" .) .Values.redis.passwordSecret.name }}
    - name: GATEWAY_REDIS_PASSWORD
      valueFrom:
        secretKeyRef:
          name: {{ .Values.redis.passwordSecret.name }}
          key: {{ .Values.redis.passwordSecret.key }}
    {{- end }}
    {{- if .Values.adminToken.existingSecret }}
    - name: GATEWAY_ADMIN_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ .Values.adminToken.existingSecret }}
          key: {{ .Values.adminToken.key }}
    {{- end }}
    {{- if .Values.dpopNonce.enabled }}
    - name: GATEWAY_DPOP_NONCE_SECRET
      valueFrom:
        secretKeyRef:
          name: {{ include "fapi-gateway.nonceSecretName" . }}
          key: {{ .Values.dpopNonce.key }}
    {{- end }}
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    {{- if ne .Values.mode "decision" }}
    - name: https
      containerPort: {{ .Values.ports.https }}
      protocol: TCP
    {{- end }}
    - name: admin
      containerPort: {{ .Values.ports.admin }}
      protocol: TCP
    {{- if eq .Values.mode "decision" }}
    - name: decision-grpc
      containerPort: {{ .Values.ports.decisionGrpc }}
      protocol: TCP
    - name: decision-http
      containerPort: {{ .Values.ports.decisionHttp }}
      protocol: TCP
    {{- end }}
  startupProbe:
    httpGet: {path: /healthz, port: admin}
    {{- toYaml .Values.probes.startup | nindent 4 }}
  livenessProbe:
    httpGet: {path: /healthz, port: admin}
    {{- toYaml .Values.probes.liveness | nindent 4 }}
  readinessProbe:
    {{- if eq .Values.mode "decision" }}
    # On the decision listener itself: ready only when the proxies can get an answer there.
    httpGet: {path: /readyz, port: decision-http}
    {{- else }}
    httpGet: {path: /readyz, port: admin}
    {{- end }}
    {{- toYaml .Values.probes.readiness | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  volumeMounts:
    - name: gateway-config
      mountPath: /etc/gateway/config
      readOnly: true
    {{- if .Values.tls.enabled }}
    - name: gateway-tls
      mountPath: /etc/gateway/tls
      readOnly: true
    {{- if .Values.tls.clientCA.secretName }}
    - name: gateway-client-ca
      mountPath: /etc/gateway/client-ca
      readOnly: true
    {{- end }}
    {{- end }}
    - name: gateway-tmp
      mountPath: /tmp
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{- define "fapi-gateway.volumes" -}}
- name: gateway-config
  configMap:
    name: {{ include "fapi-gateway.fullname" . }}
- name: gateway-tmp
  emptyDir: {medium: Memory, sizeLimit: 16Mi}
{{- if .Values.tls.enabled }}
- name: gateway-tls
  secret:
    secretName: {{ required "tls.secretName is required when tls.enabled" .Values.tls.secretName }}
    defaultMode: 0440
{{- if .Values.tls.clientCA.secretName }}
- name: gateway-client-ca
  secret:
    secretName: {{ .Values.tls.clientCA.secretName }}
    defaultMode: 0444
{{- end }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod annotations: the config checksum rolls the pods on change (configReload: rollout). */}}
{{- define "fapi-gateway.podAnnotations" -}}
{{- $a := deepCopy (.Values.podAnnotations | default dict) }}
{{- if eq .Values.configReload "rollout" }}
{{- $_ := set $a "checksum/config" (include "fapi-gateway.gatewayConfig" . | sha256sum) }}
{{- end }}
{{- if $a }}{{ toYaml $a }}{{ end }}
{{- end }}

{{- define "fapi-gateway.terminationGracePeriodSeconds" -}}
{{- add .Values.shutdown.delaySeconds .Values.shutdown.graceSeconds 5 }}
{{- end }}
