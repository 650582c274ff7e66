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

{{/* The server's image: by digest when one is given (03-mlflow.sh gives the pushed image's), so
a pod runs exactly the image that was built and checked, whatever the tag points to later. */}}
{{- define "mlflow.image" -}}
{{- $image := .Values.image -}}
{{- $repository := required "image.repository is required (the image of cluster/docker/mlflow.Dockerfile)" $image.repository -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository $image.tag -}}
{{- end -}}
{{- end -}}

{{/* The store URI, without credentials: libpq takes them from PGUSER and the password file. The
driver is named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which the image lacks. */}}
{{- define "mlflow.databaseUri" -}}
{{- $db := .Values.database -}}
{{- printf "postgresql+psycopg2://%s:%d/%s?sslmode=%s" (required "database.host is required" $db.host) (int $db.port) $db.name $db.sslMode -}}
{{- if ne $db.sslMode "require" }}{{ printf "&sslrootcert=%s" $db.sslRootCert }}{{ end -}}
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

{{/* Where the pgpass sidecar writes libpq's password file, in a memory-backed volume. */}}
{{- define "mlflow.pgpassDir" -}}/var/run/mlflow-db{{- end -}}

{{/* libpq's credentials for the server and the schema upgrade: the user, and the password file
the pgpass container keeps (PGPASSFILE is read at every new connection). */}}
{{- define "mlflow.databaseEnv" -}}
- name: PGUSER
  value: {{ .Values.database.username | quote }}
- name: PGPASSFILE
  value: {{ include "mlflow.pgpassDir" . }}/pgpass
{{- end -}}

{{/* The container that writes the password file from the RDS-managed secret: with once=true it
writes it and exits (before the schema upgrade), else it keeps it current beside the server.
Called with (dict "root" $ "once" BOOL). */}}
{{- define "mlflow.pgpassContainer" -}}
{{- $root := .root -}}
- name: {{ if .once }}pgpass{{ else }}pgpass-refresh{{ end }}
  image: {{ include "mlflow.image" $root | quote }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  command: ["python", "-m", "cluster.mlflow.pgpass"]
  args:
    - --secret-id={{ required "database.passwordSecretArn is required (terraform output rds_master_secret_arn)" $root.Values.database.passwordSecretArn }}
    - --file={{ include "mlflow.pgpassDir" $root }}/pgpass
    {{- if .once }}
    - --once
    {{- else }}
    - --every={{ $root.Values.database.passwordRefreshSeconds }}
  # A native sidecar: started before the server, stopped after it, restarted if it dies.
  restartPolicy: Always
  # The server starts once the file is there.
  startupProbe:
    exec:
      command: ["test", "-s", "{{ include "mlflow.pgpassDir" $root }}/pgpass"]
    periodSeconds: 2
    failureThreshold: 30
    {{- end }}
  resources:
    requests: {cpu: 10m, memory: 96Mi}
    limits: {cpu: 100m, memory: 160Mi}
  securityContext:
    {{- include "mlflow.containerSecurityContext" $root | nindent 4 }}
  volumeMounts:
    - {name: db-credentials, mountPath: {{ include "mlflow.pgpassDir" $root }}}
{{- end -}}

{{- define "mlflow.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end -}}

{{- define "mlflow.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
fsGroup: 1000
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{/* The password file's volume: in memory, never on the node's disk. */}}
{{- define "mlflow.pgpassVolume" -}}
- name: db-credentials
  emptyDir: {medium: Memory, sizeLimit: 1Mi}
{{- end -}}

{{- define "mlflow.scheduling" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
