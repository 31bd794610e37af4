{{- define "mailish.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mailish.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "mailish.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "mailish.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "mailish.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailish.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mailish.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "mailish.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The pool every worker pod of this release belongs to (both tracks). */}}
{{- define "mailish.poolName" -}}
{{- default (include "mailish.fullname" .) .Values.pool.name }}
{{- end }}

{{- define "mailish.secretName" -}}
{{- default (printf "%s-credentials" (include "mailish.fullname" .)) .Values.secrets.name }}
{{- end }}

{{- define "mailish.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{ printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{- define "mailish.canaryImage" -}}
{{ printf "%s:%s" .Values.image.repository .Values.canary.image.tag }}
{{- end }}

{{- define "mailish.serviceAccountName" -}}
{{- printf "%s-%s" (include "mailish.fullname" .root) .component }}
{{- end }}

{{/* Settings every mailish container gets: non-secret ConfigMap, credentials from the Secret. */}}
{{- define "mailish.credentialEnv" -}}
- name: MAILISH_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "mailish.secretName" . }}
      key: {{ .Values.secrets.keys.databaseUrl }}
- name: MAILISH_SECRET_KEYS_FILE
  value: /etc/mailish/secrets/secret-keys
{{- if .Values.secrets.oauth }}
- name: MAILISH_OAUTH_PROVIDERS_FILE
  value: /etc/mailish/secrets/oauth-providers
{{- end }}
{{- if .Values.secrets.redis }}
- name: MAILISH_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "mailish.secretName" . }}
      key: {{ .Values.secrets.keys.redisUrl }}
{{- end }}
{{- end }}

{{- define "mailish.secretVolume" -}}
- name: credentials
  secret:
    secretName: {{ include "mailish.secretName" . }}
    defaultMode: 0440
    items:
      - key: {{ .Values.secrets.keys.secretKeys }}
        path: secret-keys
      {{- if .Values.secrets.oauth }}
      - key: {{ .Values.secrets.keys.oauthProviders }}
        path: oauth-providers
      {{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{- define "mailish.secretMounts" -}}
- name: credentials
  mountPath: /etc/mailish/secrets
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end }}

{{- define "mailish.podSecurity" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{- define "mailish.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
