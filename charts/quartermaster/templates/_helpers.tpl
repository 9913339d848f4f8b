{{- define "quartermaster.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "quartermaster.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "quartermaster.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "quartermaster.serviceAccountName" -}}
{{- default (include "quartermaster.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- /*
Controller replicas. Unset: 1 with the embedded SQLite ledger (a trial), 2 with PostgreSQL. More than one
replica with SQLite is refused: each pod would keep its own ledger on its own emptyDir, so usage would be
split between pods and credit grants would vanish on failover.
*/ -}}
{{- define "quartermaster.replicas" -}}
{{- $postgres := not (empty .Values.ledger.databaseUrlSecret) -}}
{{- $n := .Values.replicaCount -}}
{{- if kindIs "invalid" $n -}}
{{- $n = ternary 2 1 $postgres -}}
{{- end -}}
{{- if and (gt (int $n) 1) (not $postgres) -}}
{{- fail (printf "replicaCount %d needs a PostgreSQL ledger: set ledger.databaseUrlSecret (with the embedded SQLite ledger each replica keeps its own usage and credits in its own pod, and credit grants vanish on failover)" (int $n)) -}}
{{- end -}}
{{- int $n -}}
{{- end -}}

{{- /* The gateway's pods: a name of their own, so the controller's selectors never match them. */ -}}
{{- define "quartermaster.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "quartermaster.gatewayLabels" -}}
{{ include "quartermaster.gatewaySelectorLabels" . }}
app.kubernetes.io/component: gateway
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
