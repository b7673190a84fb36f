{{- define "thinkgate.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "thinkgate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "thinkgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "thinkgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "thinkgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "thinkgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "thinkgate.simSelectorLabels" -}}
app.kubernetes.io/name: {{ include "thinkgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: sim
{{- end -}}

{{- define "thinkgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "thinkgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "thinkgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The gateway's TOML configuration: the user's `config` plus what the chart sets. */}}
{{- define "thinkgate.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $_ := set $cfg "listen" (printf "0.0.0.0:%v" .Values.service.port) -}}
{{- $_ := set $cfg "admin" (printf "0.0.0.0:%v" .Values.service.adminPort) -}}
{{- $b := .Values.backends -}}
{{- $ns := .Release.Namespace -}}
{{- $backends := list -}}
{{- range $b.urls -}}
{{- $backends = append $backends (dict "url" . "flavor" $b.flavor) -}}
{{- end -}}
{{- if $b.service.name -}}
{{- $backends = append $backends (dict "url" (printf "%s://%s.%s.svc:%v" (default "http" $b.service.scheme) $b.service.name (default $ns $b.service.namespace) $b.service.port) "flavor" $b.flavor) -}}
{{- end -}}
{{- if .Values.sim.enabled -}}
{{- $backends = append $backends (dict "url" (printf "http://%s-sim.%s.svc:%v" (include "thinkgate.fullname" .) $ns .Values.sim.port) "flavor" "vllm") -}}
{{- end -}}
{{- if $backends -}}
{{- $_ := set $cfg "backends" $backends -}}
{{- end -}}
{{- if .Values.clientKeys.secretName -}}
{{- $auth := default dict $cfg.auth -}}
{{- $_ := set $auth "keys_file" (printf "/etc/thinkgate-keys/%s" .Values.clientKeys.key) -}}
{{- $_ := set $cfg "auth" $auth -}}
{{- end -}}
{{- if .Values.tls.secretName -}}
{{- $tls := default dict $cfg.tls -}}
{{- $_ := set $tls "cert_file" "/etc/thinkgate-tls/tls.crt" -}}
{{- $_ := set $tls "key_file" "/etc/thinkgate-tls/tls.key" -}}
{{- $_ := set $cfg "tls" $tls -}}
{{- end -}}
{{- $up := default dict $cfg.upstream_tls -}}
{{- if .Values.upstreamTls.caSecretName -}}
{{- $_ := set $up "ca_file" (printf "/etc/thinkgate-upstream-ca/%s" .Values.upstreamTls.caKey) -}}
{{- end -}}
{{- if .Values.upstreamTls.clientSecretName -}}
{{- $_ := set $up "cert_file" "/etc/thinkgate-upstream-client/tls.crt" -}}
{{- $_ := set $up "key_file" "/etc/thinkgate-upstream-client/tls.key" -}}
{{- end -}}
{{- if $up -}}
{{- $_ := set $cfg "upstream_tls" $up -}}
{{- end -}}
{{- if .Values.tracing.endpoint -}}
{{- $tr := default dict $cfg.tracing -}}
{{- $_ := set $tr "endpoint" .Values.tracing.endpoint -}}
{{- $_ := set $tr "protocol" .Values.tracing.protocol -}}
{{- $_ := set $tr "sample_ratio" .Values.tracing.sampleRatio -}}
{{- $_ := set $cfg "tracing" $tr -}}
{{- end -}}
{{- if $b.headless.name -}}
{{- $_ := set $cfg "discovery" (dict "dns" (printf "%s.%s.svc" $b.headless.name (default $ns $b.headless.namespace)) "port" $b.headless.port "interval_ms" $b.headless.intervalMs "flavor" $b.flavor) -}}
{{- end -}}
{{- /* Helm reads every number as a float: write whole numbers as TOML
       integers, which the gateway's integer keys need. */ -}}
{{- regexReplaceAll "([=\\[,]\\s*)(-?[0-9]+)\\.0\\b" (toToml $cfg) "${1}${2}" -}}
{{- end -}}
