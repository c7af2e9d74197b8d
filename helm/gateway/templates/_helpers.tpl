{{/* Names, labels and the values computed from several others. */}}

{{- define "gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gateway.fullname" -}}
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

{{/* The admin Service's name: the full name, shortened so the suffix always fits. */}}
{{- define "gateway.adminServiceName" -}}
{{- printf "%s-admin" (include "gateway.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{- define "gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gateway.labels" -}}
helm.sh/chart: {{ include "gateway.chart" . }}
{{ include "gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Does the pod get GATEWAY_ADMIN_TOKEN, and from which Secret. */}}
{{- define "gateway.adminSecretName" -}}
{{- if .Values.adminToken.existingSecret }}
{{- .Values.adminToken.existingSecret }}
{{- else if .Values.adminToken.value }}
{{- include "gateway.fullname" . }}
{{- end }}
{{- end }}

{{- define "gateway.adminSecretKey" -}}
{{- if .Values.adminToken.existingSecret }}
{{- .Values.adminToken.existingSecretKey | default "token" }}
{{- else }}
{{- print "token" }}
{{- end }}
{{- end }}

{{/* GATEWAY_REPLICAS: gatewayReplicas, else replicaCount. */}}
{{- define "gateway.replicas" -}}
{{- if .Values.gatewayReplicas }}
{{- .Values.gatewayReplicas | int }}
{{- else }}
{{- .Values.replicaCount | int }}
{{- end }}
{{- end }}

{{/* The policy file's shutdown.pre_stop_delay: 0s when a preStop hook does the pause. */}}
{{- define "gateway.preStopDelay" -}}
{{- if .Values.shutdown.preStopHook }}
{{- print "0s" }}
{{- else }}
{{- printf "%ds" (.Values.shutdown.preStopDelaySeconds | int) }}
{{- end }}
{{- end }}

{{/* terminationGracePeriodSeconds ≥ pause + drain + margin (docs/operations.md). */}}
{{- define "gateway.terminationGracePeriodSeconds" -}}
{{- if .Values.terminationGracePeriodSeconds }}
{{- .Values.terminationGracePeriodSeconds | int }}
{{- else }}
{{- $s := .Values.shutdown }}
{{- add ($s.preStopDelaySeconds | int) ($s.drainTimeoutSeconds | int) ($s.extraGraceSeconds | int) }}
{{- end }}
{{- end }}

{{/* The rendered policy file (the ConfigMap's content and its checksum). */}}
{{- define "gateway.policyFile" -}}
{{- tpl .Values.config.policy . }}
{{- end }}
