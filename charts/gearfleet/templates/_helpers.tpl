{{/* Name of the chart, overridable. */}}
{{- define "gearfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart unless the release name already contains the chart name. */}}
{{- define "gearfleet.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "gearfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gearfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gearfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "gearfleet.labels" -}}
helm.sh/chart: {{ include "gearfleet.chart" . }}
{{ include "gearfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gearfleet
{{- end -}}

{{- define "gearfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gearfleet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "gearfleet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The broker Service name, which worker pods reach as GEARMAN_SERVERS. */}}
{{- define "gearfleet.brokerService" -}}
{{- printf "%s-broker" (include "gearfleet.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The headless Service that gives every broker pod a stable name. */}}
{{- define "gearfleet.headlessService" -}}
{{- printf "%s-brokers" (include "gearfleet.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Service of broker pod number .i alone: the pod's own name (<fullname>-N). */}}
{{- define "gearfleet.brokerPodService" -}}
{{- printf "%s-%d" (include "gearfleet.fullname" .root) (int .i) -}}
{{- end -}}

{{/* Every broker by its own Service, comma-separated: the operator's broker list and the worker
pods' GEARMAN_SERVERS. */}}
{{- define "gearfleet.brokerAddresses" -}}
{{- $addresses := list -}}
{{- range $i := until (int .Values.broker.replicas) -}}
{{- $name := include "gearfleet.brokerPodService" (dict "root" $ "i" $i) -}}
{{- $addresses = append $addresses (printf "%s.%s.svc:%d" $name $.Release.Namespace (int $.Values.broker.port)) -}}
{{- end -}}
{{- join "," $addresses -}}
{{- end -}}

{{/* Secret holding a token: its existingSecret or the chart's "<fullname>-tokens". */}}
{{- define "gearfleet.tokenSecret" -}}
{{- .token.existingSecret | default (printf "%s-tokens" (include "gearfleet.fullname" .root)) -}}
{{- end -}}
