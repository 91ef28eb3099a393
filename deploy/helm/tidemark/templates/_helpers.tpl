{{/* Names and labels. */}}

{{- define "tidemark.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tidemark.fullname" -}}
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

{{/* <fullname>-<component>; the component is at most 9 characters, so trim the rest first. */}}
{{- define "tidemark.componentName" -}}
{{- printf "%s-%s" (include "tidemark.fullname" .ctx | trunc 53 | trimSuffix "-") .component }}
{{- end }}

{{- define "tidemark.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tidemark.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{- define "tidemark.labels" -}}
{{ include "tidemark.selectorLabels" . }}
app.kubernetes.io/part-of: tidemark
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tidemark.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The Service name of the bundled NATS chart (its "nats.fullname"). */}}
{{- define "tidemark.natsFullname" -}}
{{- $nats := .Values.nats | default dict }}
{{- if $nats.fullnameOverride }}
{{- $nats.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default "nats" $nats.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tidemark.natsUrl" -}}
{{- if .Values.nats.enabled }}
{{- printf "nats://%s.%s.svc:4222" (include "tidemark.natsFullname" .) .Release.Namespace }}
{{- else }}
{{- required "externalNats.url is required unless nats.enabled (e.g. nats://nats.nats.svc:4222)" .Values.externalNats.url }}
{{- end }}
{{- end }}

{{/*
Checks that span values, so a bad combination fails at render time with a sentence, not at
runtime in a crash loop.
*/}}
{{- define "tidemark.validate" -}}
{{- range $component := list "executor" "archiver" }}
{{- if (index $.Values $component).databases }}
{{- fail (printf "%s.databases has moved: declare each database once in the top-level databases list (uid, engine, name, system_id, node, and postgres: {data_dir, port, os_user, socket_dir, spool_dir, pg_wal_dir} or oracle: {oracle_home, oracle_sid, staging_dir, dsn, user, password_file, archive_dest_id}); the executor and the archiver both read it" $component) }}
{{- end }}
{{- end }}
{{- $catalog := .Values.catalog }}
{{- if and (gt (int $catalog.replicas) 1) (not (hasPrefix "postgresql" $catalog.database.url)) }}
{{- fail (printf "catalog.replicas is %d: a replicated catalog shares one PostgreSQL index, so set catalog.database.url (postgresql://user@host:5432/db) or use one replica" (int $catalog.replicas)) }}
{{- end }}
{{- if and $catalog.persistence.enabled (or (gt (int $catalog.replicas) 1) $catalog.database.url) }}
{{- fail "catalog.persistence is for the single-replica SQLite catalog; a PostgreSQL catalog (catalog.database.url) keeps its index in the database" }}
{{- end }}
{{- if and .Values.nats.enabled (ne .Values.natsAuth.mode "password") }}
{{- fail "nats.enabled generates the NATS server's users from the permissions matrix: set natsAuth.mode=password and global.tidemark.natsPasswords" }}
{{- end }}
{{- if and (eq .Values.natsAuth.mode "password") (not .Values.global.tidemark.natsPasswords) }}
{{- fail "natsAuth.mode=password needs global.tidemark.natsPasswords: a Secret with keys planner, catalog, executor, archiver, tool" }}
{{- end }}
{{- if eq .Values.natsAuth.mode "creds" }}
{{- range $component := list "planner" "catalog" "executor" "archiver" }}
{{- if not (index $.Values $component).nats.credentialsSecret.name }}
{{- fail (printf "natsAuth.mode=creds needs %s.nats.credentialsSecret.name: a Secret holding that service's .creds file" $component) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.gcs.workloadIdentityServiceAccount .Values.gcs.credentialsSecret.name }}
{{- fail "gcs: choose Workload Identity (gcs.workloadIdentityServiceAccount) or a key file (gcs.credentialsSecret), not both" }}
{{- end }}
{{- end }}

{{/*
TOML from a map: scalars and arrays of scalars first, then sub-tables, then arrays of tables,
keys sorted. Strings are JSON-quoted (a valid TOML basic string); integral numbers print as
integers (Helm reads every number as a float); nulls are left out (TOML has none).
Input: dict "map" <map> "prefix" <"a.b." or "">.
*/}}
{{- define "tidemark.toml" -}}
{{- $prefix := .prefix }}
{{- range $key, $value := .map }}
{{- if not (or (kindIs "invalid" $value) (kindIs "map" $value) (and (kindIs "slice" $value) $value (kindIs "map" (first $value)))) }}
{{ $key }} = {{ include "tidemark.tomlValue" $value }}
{{- end }}
{{- end }}
{{- range $key, $value := .map }}
{{- if kindIs "map" $value }}

[{{ $prefix }}{{ $key }}]
{{- include "tidemark.toml" (dict "map" $value "prefix" (printf "%s%s." $prefix $key)) }}
{{- end }}
{{- end }}
{{- range $key, $value := .map }}
{{- if and (kindIs "slice" $value) $value (kindIs "map" (first $value)) }}
{{- range $item := $value }}

[[{{ $prefix }}{{ $key }}]]
{{- include "tidemark.toml" (dict "map" $item "prefix" (printf "%s%s." $prefix $key)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tidemark.tomlValue" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "bool" . }}{{ ternary "true" "false" . }}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) }}
{{- if eq (float64 (int64 .)) (float64 .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if kindIs "slice" . }}[{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "tidemark.tomlValue" $v }}{{ end }}]
{{- else }}{{ . }}
{{- end }}
{{- end }}

{{/*
Where a service's secrets are mounted: the NATS credentials, the NATS CA, the GCS key and
the catalog's database password each have their own directory.
*/}}
{{- define "tidemark.secretDir" -}}/var/run/secrets/tidemark{{- end }}

{{/* The settings every service shares, as a map for "tidemark.toml". Input: ctx, component. */}}
{{- define "tidemark.commonSettings" -}}
{{- $ := .ctx }}
{{- $dir := include "tidemark.secretDir" . }}
{{- $nats := dict "url" (include "tidemark.natsUrl" $) "name" (printf "tidemark-%s" .component) }}
{{- if eq $.Values.natsAuth.mode "creds" }}
{{- $_ := set $nats "credentials_file" (printf "%s/nats/%s" $dir (index $.Values .component).nats.credentialsSecret.key) }}
{{- else if eq $.Values.natsAuth.mode "password" }}
{{- $_ := set $nats "user" (printf "tidemark-%s" .component) }}
{{- $_ := set $nats "password_file" (printf "%s/nats/password" $dir) }}
{{- end }}
{{- if and (not $.Values.nats.enabled) $.Values.externalNats.tls.caSecret.name }}
{{- $_ := set $nats "tls_ca" (printf "%s/nats-ca/%s" $dir $.Values.externalNats.tls.caSecret.key) }}
{{- end }}
{{- $telemetry := dict "log_level" $.Values.telemetry.logLevel "log_format" $.Values.telemetry.logFormat }}
{{- with $.Values.telemetry.otlpEndpoint }}
{{- $_ := set $telemetry "otlp_endpoint" . }}
{{- end }}
{{- $settings := dict "state_dir" $.Values.stateDir "health_port" $.Values.healthPort "health_host" "0.0.0.0" "nats" $nats "bus" (dict "replicas" $.Values.bus.replicas) "telemetry" $telemetry }}
{{- toJson $settings }}
{{- end }}

{{- define "tidemark.storeUrl" -}}
{{- printf "gs://%s" (required "gcs.bucket is required: the archive bucket" .Values.gcs.bucket) }}
{{- end }}

{{/* Env every Tidemark container has. Input: ctx, component. */}}
{{- define "tidemark.env" -}}
- name: TIDEMARK_CONFIG
  value: /etc/tidemark/tidemark.toml
- name: TIDEMARK_NODE
  valueFrom:
    fieldRef:
      # executor and archiver answer for their node (tm.cmd.executor.<node>.…); the others
      # are one of several replicas.
      fieldPath: {{ ternary "spec.nodeName" "metadata.name" (has .component (list "executor" "archiver")) }}
{{- if .ctx.Values.gcs.credentialsSecret.name }}
- name: GOOGLE_APPLICATION_CREDENTIALS
  value: {{ printf "%s/gcs/%s" (include "tidemark.secretDir" .) .ctx.Values.gcs.credentialsSecret.key }}
{{- end }}
{{- end }}

{{/* Volumes every Tidemark pod has (settings, secrets, /tmp, state). Input: ctx, component. */}}
{{- define "tidemark.volumes" -}}
{{- $ := .ctx }}
- name: settings
  configMap:
    name: {{ include "tidemark.componentName" . }}
- name: tmp
  emptyDir: {}
{{- if not (has .component (list "executor" "archiver")) }}
{{- if and (eq .component "catalog") $.Values.catalog.persistence.enabled }}
- name: state
  persistentVolumeClaim:
    claimName: {{ include "tidemark.componentName" . }}
{{- else }}
- name: state
  emptyDir: {}
{{- end }}
{{- else }}
- name: state
  hostPath:
    # Created beforehand, owned by runAsUser: a directory the kubelet creates belongs to root.
    path: {{ printf "%s/%s" (trimSuffix "/" $.Values.databaseNodes.stateHostPath) .component }}
    type: Directory
{{- end }}
{{- if eq $.Values.natsAuth.mode "creds" }}
- name: nats-auth
  secret:
    secretName: {{ (index $.Values .component).nats.credentialsSecret.name }}
    defaultMode: 0400
    items:
      - key: {{ (index $.Values .component).nats.credentialsSecret.key }}
        path: {{ (index $.Values .component).nats.credentialsSecret.key }}
{{- else if eq $.Values.natsAuth.mode "password" }}
- name: nats-auth
  secret:
    secretName: {{ $.Values.global.tidemark.natsPasswords }}
    defaultMode: 0400
    items:
      - key: {{ .component }}
        path: password
{{- end }}
{{- if and (not $.Values.nats.enabled) $.Values.externalNats.tls.caSecret.name }}
- name: nats-ca
  secret:
    secretName: {{ $.Values.externalNats.tls.caSecret.name }}
    items:
      - key: {{ $.Values.externalNats.tls.caSecret.key }}
        path: {{ $.Values.externalNats.tls.caSecret.key }}
{{- end }}
{{- if $.Values.gcs.credentialsSecret.name }}
- name: gcs-key
  secret:
    secretName: {{ $.Values.gcs.credentialsSecret.name }}
    defaultMode: 0400
    items:
      - key: {{ $.Values.gcs.credentialsSecret.key }}
        path: {{ $.Values.gcs.credentialsSecret.key }}
{{- end }}
{{- if and (eq .component "catalog") $.Values.catalog.database.passwordSecret.name }}
- name: catalog-db
  secret:
    secretName: {{ $.Values.catalog.database.passwordSecret.name }}
    defaultMode: 0400
    items:
      - key: {{ $.Values.catalog.database.passwordSecret.key }}
        path: password
{{- end }}
{{- range (index $.Values .component).volumes | default list }}
- name: {{ printf "node-%s" .name }}
  {{- if .hostPath }}
  hostPath:
    path: {{ .hostPath }}
    type: Directory
  {{- else if .secretName }}
  secret:
    secretName: {{ .secretName }}
    defaultMode: 0400
  {{- else }}
  persistentVolumeClaim:
    claimName: {{ .claimName }}
    readOnly: {{ .readOnly | default false }}
  {{- end }}
{{- end }}
{{- end }}

{{- define "tidemark.volumeMounts" -}}
{{- $ := .ctx }}
{{- $dir := include "tidemark.secretDir" . }}
- name: settings
  mountPath: /etc/tidemark
  readOnly: true
- name: tmp
  mountPath: /tmp
- name: state
  mountPath: {{ $.Values.stateDir }}
{{- if ne $.Values.natsAuth.mode "none" }}
- name: nats-auth
  mountPath: {{ $dir }}/nats
  readOnly: true
{{- end }}
{{- if and (not $.Values.nats.enabled) $.Values.externalNats.tls.caSecret.name }}
- name: nats-ca
  mountPath: {{ $dir }}/nats-ca
  readOnly: true
{{- end }}
{{- if $.Values.gcs.credentialsSecret.name }}
- name: gcs-key
  mountPath: {{ $dir }}/gcs
  readOnly: true
{{- end }}
{{- if and (eq .component "catalog") $.Values.catalog.database.passwordSecret.name }}
- name: catalog-db
  mountPath: {{ $dir }}/catalog-db
  readOnly: true
{{- end }}
{{- range (index $.Values .component).volumes | default list }}
- name: {{ printf "node-%s" .name }}
  mountPath: {{ .mountPath }}
  readOnly: {{ or .readOnly (not (empty .secretName)) }}
{{- end }}
{{- end }}

{{/*
The pod spec of every service: one container running `python -m services.<component>`.
Input: ctx, component, and optionally ports (a list of {name, containerPort}).
*/}}
{{- define "tidemark.podSpec" -}}
{{- $ := .ctx }}
{{- $values := index $.Values .component }}
{{- $nodeLocal := has .component (list "executor" "archiver") }}
serviceAccountName: {{ include "tidemark.componentName" . }}
automountServiceAccountToken: {{ and (eq .component "executor") $.Values.executor.volumeSnapshots.enabled }}
{{- with $.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  runAsNonRoot: true
  {{- if $nodeLocal }}
  # The database's OS user: it owns the spool, the data directory and the sockets.
  runAsUser: {{ $values.runAsUser }}
  runAsGroup: {{ $values.runAsGroup }}
  {{- else }}
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  {{- end }}
  seccompProfile:
    type: RuntimeDefault
{{- if $nodeLocal }}
nodeSelector:
  {{- toYaml $.Values.databaseNodes.nodeSelector | nindent 2 }}
{{- with $.Values.databaseNodes.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- else }}
{{- with $values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
# Services drain on SIGTERM: stop fetching, finish handlers in hand (bus.drain_timeout_s).
terminationGracePeriodSeconds: {{ ternary 120 45 (eq .component "executor") }}
containers:
  - name: {{ .component }}
    image: {{ include "tidemark.image" $ }}
    imagePullPolicy: {{ $.Values.image.pullPolicy }}
    command: ["python", "-m", "services.{{ .component }}"]
    env:
      {{- include "tidemark.env" . | trim | nindent 6 }}
    ports:
      - name: health
        containerPort: {{ $.Values.healthPort }}
        protocol: TCP
      {{- range .ports }}
      - name: {{ .name }}
        containerPort: {{ .containerPort }}
        protocol: TCP
      {{- end }}
    startupProbe:
      httpGet:
        path: /healthz
        port: health
      periodSeconds: 2
      failureThreshold: 30
    livenessProbe:
      httpGet:
        path: /healthz
        port: health
      periodSeconds: 10
      timeoutSeconds: 3
      failureThreshold: 3
    readinessProbe:
      httpGet:
        path: /readyz
        port: health
      periodSeconds: 5
      timeoutSeconds: 3
      failureThreshold: 2
    resources:
      {{- toYaml $values.resources | nindent 6 }}
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      runAsNonRoot: true
      capabilities:
        drop: ["ALL"]
    volumeMounts:
      {{- include "tidemark.volumeMounts" . | trim | nindent 6 }}
volumes:
  {{- include "tidemark.volumes" . | trim | nindent 2 }}
{{- end }}

{{/*
The NATS permissions matrix, "tidemark.natsPermissions", is generated from
services/bus/permissions.py into _nats-permissions.tpl: one matrix for the chart and the embedded
stack. The admin role is in it (for operators issuing their own user) but gets no account here.
*/}}

{{/*
The bundled NATS server's accounts, rendered inside the NATS subchart (its `config.merge`
runs through tpl there): .Values is then the `nats:` block; `global` is shared.
Passwords are environment references the server resolves (see tidemark.natsServerEnv).
*/}}
{{- define "tidemark.natsServerAccounts" -}}
{{- $permissions := include "tidemark.natsPermissions" . | fromYaml }}
accounts:
  TIDEMARK:
    jetstream: enabled
    users:
    {{- range $user := list "planner" "catalog" "executor" "archiver" "tool" }}
      - user: {{ printf "tidemark-%s" $user }}
        password: {{ printf "<< $TIDEMARK_NATS_PASSWORD_%s >>" (upper $user) | quote }}
        permissions:
          {{- get $permissions $user | toYaml | nindent 10 }}
    {{- end }}
{{- end }}

{{- define "tidemark.natsServerEnv" -}}
{{- range $user := list "planner" "catalog" "executor" "archiver" "tool" }}
{{ printf "TIDEMARK_NATS_PASSWORD_%s" (upper $user) }}:
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.global.tidemark.natsPasswords | quote }}
      key: {{ $user }}
{{- end }}
{{- end }}
