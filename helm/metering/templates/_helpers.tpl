{{/* Chart name (nameOverride wins). */}}
{{- define "metering.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the prefix of every resource (fullnameOverride wins). */}}
{{- define "metering.fullname" -}}
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

{{/* Name of the headless Service (stable pod DNS names). */}}
{{- define "metering.headlessName" -}}
{{- printf "%s-headless" (include "metering.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Chart label value. */}}
{{- define "metering.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels selecting the worker pods. */}}
{{- define "metering.selectorLabels" -}}
app.kubernetes.io/name: {{ include "metering.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end }}

{{/* Labels of every resource. */}}
{{- define "metering.labels" -}}
helm.sh/chart: {{ include "metering.chart" . }}
{{ include "metering.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: metering
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* ServiceAccount name. */}}
{{- define "metering.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "metering.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the ConfigMap holding accounts.yaml. */}}
{{- define "metering.accountsConfigMap" -}}
{{- default (printf "%s-accounts" (include "metering.fullname" .)) .Values.existingAccountsConfigMap }}
{{- end }}

{{/* Kafka security protocol from the SASL and TLS switches. */}}
{{- define "metering.kafkaSecurityProtocol" -}}
{{- $sasl := .Values.kafka.sasl.enabled }}
{{- $tls := .Values.kafka.tls.enabled }}
{{- if and $sasl $tls }}SASL_SSL
{{- else if $sasl }}SASL_PLAINTEXT
{{- else if $tls }}SSL
{{- else }}PLAINTEXT
{{- end }}
{{- end }}

{{/* Image reference. */}}
{{- define "metering.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* A DNS-1123 name part from a file name: "Metering Overview.json" -> "metering-overview". */}}
{{- define "metering.dnsPart" -}}
{{- regexReplaceAll "[^a-z0-9-]+" (. | base | trimSuffix ".json" | lower) "-" | trimAll "-" }}
{{- end }}
