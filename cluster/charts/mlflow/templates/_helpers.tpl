{{/* Name of every object of the release, e.g. "mlflow". */}}
{{- define "mlflow.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mlflow.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mlflow.labels" -}}
{{ include "mlflow.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* postgresql:// URI without credentials: libpq takes them from PGUSER / PGPASSWORD. */}}
{{- define "mlflow.databaseUri" -}}
{{- $db := .Values.database -}}
{{- printf "postgresql://%s:%d/%s?sslmode=%s" (required "database.host is required" $db.host) (int $db.port) $db.name $db.sslMode -}}
{{- end -}}

{{/* Host headers the server answers (MLflow's DNS-rebinding protection): the in-cluster service
names, the ingress host, and localhost for `kubectl port-forward`. */}}
{{- define "mlflow.allowedHosts" -}}
{{- $name := include "mlflow.fullname" . -}}
{{- $port := int .Values.service.port -}}
{{- $hosts := list "localhost:*" "127.0.0.1:*" (printf "%s:%d" $name $port) (printf "%s.%s:%d" $name .Release.Namespace $port) (printf "%s.%s.svc:%d" $name .Release.Namespace $port) (printf "%s.%s.svc.cluster.local:%d" $name .Release.Namespace $port) -}}
{{- if .Values.ingress.enabled -}}
{{- $hosts = append $hosts .Values.ingress.host -}}
{{- end -}}
{{- concat $hosts .Values.server.extraAllowedHosts | join "," -}}
{{- end -}}
