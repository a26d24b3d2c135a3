{{/*
Names, labels, images and the pieces every Deployment shares.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "beatkeeper.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, else RELEASE-NAME, or just
RELEASE when it already contains NAME. Truncated so suffixes still fit 63 chars.
*/}}
{{- define "beatkeeper.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "beatkeeper.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "beatkeeper.labels" -}}
helm.sh/chart: {{ include "beatkeeper.chart" . }}
{{ include "beatkeeper.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: beatkeeper
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "beatkeeper.selectorLabels" -}}
app.kubernetes.io/name: {{ include "beatkeeper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: (dict "ctx" $ "component" "operator"). */}}
{{- define "beatkeeper.componentLabels" -}}
{{ include "beatkeeper.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "beatkeeper.componentSelector" -}}
{{ include "beatkeeper.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* An image reference from (dict "image" .Values.x.image "default" .Values.image "ctx" $). */}}
{{- define "beatkeeper.image" -}}
{{- $fallback := .default | default dict }}
{{- $repository := .image.repository | default $fallback.repository }}
{{- $tag := .image.tag | default $fallback.tag | default .ctx.Chart.AppVersion }}
{{- $digest := .image.digest | default $fallback.digest }}
{{- if $digest }}
{{- printf "%s@%s" $repository $digest }}
{{- else }}
{{- printf "%s:%s" $repository (toString $tag) }}
{{- end }}
{{- end }}

{{- define "beatkeeper.operatorImage" -}}
{{- include "beatkeeper.image" (dict "image" .Values.image "ctx" .) }}
{{- end }}

{{/* Beat runs the operator image unless beat.image says otherwise. */}}
{{- define "beatkeeper.beatImage" -}}
{{- include "beatkeeper.image" (dict "image" .Values.beat.image "default" .Values.image "ctx" .) }}
{{- end }}

{{- define "beatkeeper.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (printf "%s-operator" (include "beatkeeper.fullname" .)) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "beatkeeper.beat.serviceAccountName" -}}
{{- if .Values.beat.serviceAccount.create }}
{{- default (printf "%s-beat" (include "beatkeeper.fullname" .)) .Values.beat.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.beat.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The webhook: Service, serving-certificate Secret and the names the apiserver uses. */}}
{{- define "beatkeeper.webhook.serviceName" -}}
{{- printf "%s-webhook" (include "beatkeeper.fullname" .) }}
{{- end }}

{{- define "beatkeeper.webhook.secretName" -}}
{{- printf "%s-webhook-tls" (include "beatkeeper.fullname" .) }}
{{- end }}

{{- define "beatkeeper.webhook.dnsNames" -}}
{{- $service := include "beatkeeper.webhook.serviceName" . }}
{{- list $service (printf "%s.%s" $service .Release.Namespace) (printf "%s.%s.svc" $service .Release.Namespace) (printf "%s.%s.svc.%s" $service .Release.Namespace .Values.clusterDomain) | toJson }}
{{- end }}

{{/* Redis: where the operator, beat and Flower find it. */}}
{{- define "beatkeeper.redis.bundledName" -}}
{{- printf "%s-redis" (include "beatkeeper.fullname" .) }}
{{- end }}

{{- define "beatkeeper.redis.bundledHost" -}}
{{- printf "%s.%s.svc.%s" (include "beatkeeper.redis.bundledName" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/* The Secret and key holding the bundled Redis password (derived, or the user's). */}}
{{- define "beatkeeper.redis.passwordSecret" -}}
{{- .Values.redis.bundled.auth.existingSecret | default (include "beatkeeper.redis.bundledName" .) }}
{{- end }}

{{- define "beatkeeper.redis.passwordKey" -}}
{{- if .Values.redis.bundled.auth.existingSecret }}{{ .Values.redis.bundled.auth.passwordKey }}{{ else }}password{{ end }}
{{- end }}

{{/*
The bundled Redis password the chart makes when auth.existingSecret is empty: 32 hex
digits (128 bits) of SHA-256 over auth.passwordSeed, the release namespace and the
fullname. The same values give the same password on every render (helm upgrade,
`helm template`, Argo CD), without lookup or randomness. It is exactly as secret as the
seed: with the default, empty seed anyone who knows the release's name and namespace
can work it out (NOTES.txt and the README say so).
*/}}
{{- define "beatkeeper.redis.derivedPassword" -}}
{{- list "beatkeeper-redis-password" .Values.redis.bundled.auth.passwordSeed .Release.Namespace (include "beatkeeper.fullname" .) | join "\n" | sha256sum | trunc 32 }}
{{- end }}

{{/*
A digest of the derived password for the pods that use it (Redis, operator, beat), so a
new seed rolls all three; empty with auth.existingSecret or an external Redis.
*/}}
{{- define "beatkeeper.redis.passwordChecksum" -}}
{{- if and .Values.redis.bundled.enabled (not .Values.redis.bundled.auth.existingSecret) }}
{{- include "beatkeeper.redis.derivedPassword" . | sha256sum | trunc 16 }}
{{- end }}
{{- end }}

{{/* The Secret and key holding the URL: the user's (external) or the chart's (bundled). */}}
{{- define "beatkeeper.redis.urlSecret" -}}
{{- if .Values.redis.bundled.enabled }}
{{- include "beatkeeper.redis.bundledName" . }}
{{- else }}
{{- required "redis.external.existingSecret (a Secret with the Redis URL) or redis.bundled.enabled=true is required" .Values.redis.external.existingSecret }}
{{- end }}
{{- end }}

{{- define "beatkeeper.redis.urlKey" -}}
{{- if .Values.redis.bundled.enabled }}url{{ else }}{{ .Values.redis.external.urlKey }}{{ end }}
{{- end }}

{{/* TLS to an external Redis: only when asked, and never with the bundled one. */}}
{{- define "beatkeeper.redis.tls" -}}
{{- if and (not .Values.redis.bundled.enabled) .Values.redis.external.tls.enabled }}true{{ end }}
{{- end }}

{{- define "beatkeeper.redis.tlsDir" -}}/etc/beatkeeper/redis-tls{{- end }}

{{/* Environment shared by the operator and beat: Redis URL, TLS files, redbeat keys. */}}
{{- define "beatkeeper.redis.env" -}}
{{- if .Values.redis.bundled.enabled }}
# The URL is composed in the pod from the password Secret (Kubernetes expands $(VAR)).
- name: BEATKEEPER_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "beatkeeper.redis.passwordSecret" . }}
      key: {{ include "beatkeeper.redis.passwordKey" . }}
- name: BEATKEEPER_REDIS_URL
  value: {{ printf "redis://:$(BEATKEEPER_REDIS_PASSWORD)@%s:%d/0" (include "beatkeeper.redis.bundledHost" .) (int .Values.redis.bundled.port) | quote }}
{{- else }}
- name: BEATKEEPER_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "beatkeeper.redis.urlSecret" . }}
      key: {{ include "beatkeeper.redis.urlKey" . }}
{{- end }}
- name: BEATKEEPER_REDBEAT_PREFIX
  value: {{ .Values.redbeatPrefix | quote }}
{{- if .Values.tenancy.enabled }}
- name: BEATKEEPER_TENANCY
  value: "true"
{{- end }}
{{- if include "beatkeeper.redis.tls" . }}
{{- $tls := .Values.redis.external.tls }}
- name: BEATKEEPER_BROKER_TLS_VERIFY
  value: {{ $tls.verify | quote }}
{{- if $tls.caSecret.name }}
- name: BEATKEEPER_BROKER_TLS_CA_FILE
  value: {{ include "beatkeeper.redis.tlsDir" . }}/ca/{{ $tls.caSecret.key }}
{{- end }}
{{- if $tls.clientCertSecret.name }}
- name: BEATKEEPER_BROKER_TLS_CERT_FILE
  value: {{ include "beatkeeper.redis.tlsDir" . }}/client/{{ $tls.clientCertSecret.certKey }}
- name: BEATKEEPER_BROKER_TLS_KEY_FILE
  value: {{ include "beatkeeper.redis.tlsDir" . }}/client/{{ $tls.clientCertSecret.keyKey }}
{{- end }}
{{- end }}
{{- end }}

{{- define "beatkeeper.redis.tlsVolumes" -}}
{{- if include "beatkeeper.redis.tls" . }}
{{- $tls := .Values.redis.external.tls }}
{{- if $tls.caSecret.name }}
- name: redis-tls-ca
  secret:
    secretName: {{ $tls.caSecret.name }}
    defaultMode: 0440
    items:
      - key: {{ $tls.caSecret.key }}
        path: {{ $tls.caSecret.key }}
{{- end }}
{{- if $tls.clientCertSecret.name }}
- name: redis-tls-client
  secret:
    secretName: {{ $tls.clientCertSecret.name }}
    defaultMode: 0440
    items:
      - key: {{ $tls.clientCertSecret.certKey }}
        path: {{ $tls.clientCertSecret.certKey }}
      - key: {{ $tls.clientCertSecret.keyKey }}
        path: {{ $tls.clientCertSecret.keyKey }}
{{- end }}
{{- end }}
{{- end }}

{{- define "beatkeeper.redis.tlsMounts" -}}
{{- if include "beatkeeper.redis.tls" . }}
{{- if .Values.redis.external.tls.caSecret.name }}
- name: redis-tls-ca
  mountPath: {{ include "beatkeeper.redis.tlsDir" . }}/ca
  readOnly: true
{{- end }}
{{- if .Values.redis.external.tls.clientCertSecret.name }}
- name: redis-tls-client
  mountPath: {{ include "beatkeeper.redis.tlsDir" . }}/client
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{/* Namespaces the operator watches, deduplicated and sorted ("" = cluster-wide). */}}
{{- define "beatkeeper.watchNamespaces" -}}
{{- .Values.watchNamespaces | uniq | sortAlpha | join "," }}
{{- end }}

{{/*
The rules the operator needs on namespaced resources (Role or ClusterRole). Each verb is
one the operator or kopf really calls: tests/e2e/test_rbac_least_privilege.py reads the
end-to-end tier's audit log and fails on a grant nothing used (or a call nothing grants).
*/}}
{{- define "beatkeeper.operator.namespacedRules" -}}
# ScheduledTasks: kopf watches them and writes its annotations and finalizer (patch); the
# operator reads one before it changes Beatkeeper's finalizer (get, then a patch that
# carries the resourceVersion).
- apiGroups: ["beatkeeper.dev"]
  resources: ["scheduledtasks"]
  verbs: ["get", "list", "watch", "patch"]
# WorkerPools: watched and annotated, never read one by one.
- apiGroups: ["beatkeeper.dev"]
  resources: ["workerpools"]
  verbs: ["list", "watch", "patch"]
# Status: JSON merge patches of the fields the operator owns.
- apiGroups: ["beatkeeper.dev"]
  resources: ["scheduledtasks/status", "workerpools/status"]
  verbs: ["patch"]
# The worker Deployment's ownerReference sets blockOwnerDeletion; where the
# OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift, hardened
# clusters), creating it needs this right on the owning pool.
- apiGroups: ["beatkeeper.dev"]
  resources: ["workerpools/finalizers"]
  verbs: ["update"]
# Core Events on the objects, kopf's and the operator's: a repeat of the same event is
# read and its count patched, as client-go's recorder does.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "get", "patch"]
# One worker Deployment per WorkerPool: watched, created, server-side applied (patch) and
# read back when a create races. Never deleted: it goes with its pool (owner reference).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Worker pods: watched, to say why a pool's pods cannot start.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Each namespace's Redis credential Secret (Redis tenancy): the operator writes it when the
# namespace's first WorkerPool comes and on rotation. It never reads or lists Secrets.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "update"]
{{- end }}

{{/* Cluster-scoped: what kopf needs to discover its resources, and the webhook's reviews. */}}
{{- define "beatkeeper.operator.clusterRules" -}}
# kopf lists the CRDs at startup and watches them for changes to the kinds it serves.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if .Values.watchNamespaces }}
# Watching a list of namespaces, kopf lists and watches namespaces to follow them
# (cluster-wide, it does not).
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
# The admission webhook asks whether a WorkerPool's author may create what the pool
# creates (SubjectAccessReview): no confused deputy.
- apiGroups: ["authorization.k8s.io"]
  resources: ["subjectaccessreviews"]
  verbs: ["create"]
{{- end }}

{{/* The pod-level security context every Beatkeeper pod uses. */}}
{{- define "beatkeeper.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "beatkeeper.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}
