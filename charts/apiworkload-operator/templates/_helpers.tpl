{{/* Name of the release's objects: the release name, or <release>-apiworkload-operator. */}}
{{- define "apiworkload.fullname" -}}
{{- if contains "apiworkload" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-apiworkload-operator" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end }}

{{/* The ClusterRole the operator binds to each workload's ServiceAccount for its sidecar. */}}
{{- define "apiworkload.sidecarRole" -}}
{{- printf "%s-sidecar" (include "apiworkload.fullname" .) -}}
{{- end }}

{{/* Labels on every object of the chart. */}}
{{- define "apiworkload.labels" -}}
app.kubernetes.io/name: apiworkload-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "apiworkload.selectorLabels" -}}
app.kubernetes.io/name: apiworkload-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Leader election: explicit true/false, or on with more than one replica. */}}
{{- define "apiworkload.leaderElect" -}}
{{- if eq (toString .Values.leaderElection.enabled) "auto" -}}
{{- gt (int .Values.replicaCount) 1 -}}
{{- else -}}
{{- .Values.leaderElection.enabled -}}
{{- end -}}
{{- end }}

{{/* Whether the Prometheus Operator's API is served. */}}
{{- define "apiworkload.monitoringApi" -}}
{{- .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" -}}
{{- end }}
