{{- define "collector.name" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "collector.labels" -}}
app.kubernetes.io/name: collector
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "collector.selector" -}}
app.kubernetes.io/name: collector
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "collector.serviceAccount" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "collector.name" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The default collector.toml: every pod's log, parsed, to the configured stream. */}}
{{- define "collector.config" -}}
[collector]
state_dir = {{ .Values.stateDir | quote }}
# The node, not the pod: it stays the same across pod restarts, so (host, dev, ino, offset)
# names a record for good.
host = "${NODE_NAME}"

[metrics]
listen = {{ .Values.metrics.listen | quote }}
{{- if .Values.metrics.cloudwatch.enabled }}

[metrics.cloudwatch]
namespace = {{ .Values.metrics.cloudwatch.namespace | quote }}
{{- end }}

[[flow]]
name = "pods"
paths = ["/var/log/pods/**/*.log"]
{{- if .Values.parseCri }}

[[flow.transform]]
kind = "log_to_json"
format = "cri"
{{- end }}

[[flow.transform]]
kind = "add_kubernetes"

[flow.sink]
kind = {{ .Values.sink.kind | quote }}
{{- if eq .Values.sink.kind "firehose" }}
delivery_stream = {{ required "sink.stream (or config) is required" .Values.sink.stream | quote }}
{{- else }}
stream = {{ required "sink.stream (or config) is required" .Values.sink.stream | quote }}
partition_key = {{ .Values.sink.partitionKey | quote }}
{{- end }}
envelope = {{ .Values.sink.envelope | quote }}
{{- with .Values.sink.region }}
region = {{ . | quote }}
{{- end }}
{{- end -}}
