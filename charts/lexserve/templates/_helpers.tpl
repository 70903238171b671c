{{/* The release's full name, within the 63 characters of a label value. */}}
{{- define "lexserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "lexserve.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "lexserve.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "lexserve.serviceAccountName" -}}
{{- default (include "lexserve.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "lexserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "lexserve.sidecarImage" -}}
{{- printf "%s:%s" .Values.sidecarImage.repository (default .Chart.AppVersion .Values.sidecarImage.tag) -}}
{{- end -}}

{{/* The Service in front of the external metrics API, and the Secret of its certificate. */}}
{{- define "lexserve.metricsApiService" -}}
{{- printf "%s-metrics-api" (include "lexserve.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "lexserve.metricsApiSecret" -}}
{{- printf "%s-metrics-api-tls" (include "lexserve.fullname" .) | trunc 253 -}}
{{- end -}}

{{/* Where the operator's Roles apply: the watched namespace, or everywhere. */}}
{{- define "lexserve.clusterWide" -}}
{{- if eq .Values.watchNamespace "" -}}true{{- end -}}
{{- end -}}
