{{/*
Names, labels and values shared by every template. Components are "gateway" and the worker
stages "extractor", "summarizer", "notifier" (the same names as conveyor.topics.STAGES).
*/}}

{{- define "conveyor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<release>-<chart>", or the release name when it already contains the chart name. */}}
{{- define "conveyor.fullname" -}}
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

{{- define "conveyor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of a component's objects. Call with (dict "root" $ "component" "gateway"). */}}
{{- define "conveyor.componentName" -}}
{{- printf "%s-%s" (include "conveyor.fullname" .root | trunc 50 | trimSuffix "-") .component -}}
{{- end -}}

{{/* Labels every object carries. Call with (dict "root" $ "component" "<name>"), component optional. */}}
{{- define "conveyor.labels" -}}
helm.sh/chart: {{ include "conveyor.chart" .root }}
{{ include "conveyor.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: conveyor
{{- end -}}

{{/* Labels that select a component's pods. Call with (dict "root" $ "component" "<name>"). */}}
{{- define "conveyor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "conveyor.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{- define "conveyor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "conveyor.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "conveyor.configMapName" -}}
{{- printf "%s-config" (include "conveyor.fullname" .) -}}
{{- end -}}

{{/* The Secret every container loads: the existing one, or the one the chart renders. */}}
{{- define "conveyor.secretName" -}}
{{- default (printf "%s-secrets" (include "conveyor.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "conveyor.apiKeysSecretName" -}}
{{- default (printf "%s-api-keys" (include "conveyor.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "conveyor.stateClaimName" -}}
{{- default (printf "%s-state" (include "conveyor.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/* Image of a component. Call with (dict "root" $ "component" "<name>"). */}}
{{- define "conveyor.image" -}}
{{- $image := (index .root.Values .component).image -}}
{{- $repository := $image.repository -}}
{{- with .root.Values.image.registry -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) $repository -}}
{{- end -}}
{{- $tag := $image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion | toString -}}
{{- if hasPrefix "sha256:" $tag -}}
{{- printf "%s@%s" $repository $tag -}}
{{- else -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Fixed paths and ports, shared with the images (the Dockerfiles under services). */}}
{{- define "conveyor.home" -}}/var/lib/conveyor{{- end -}}
{{- define "conveyor.gatewayPort" -}}8000{{- end -}}
{{- define "conveyor.metricsPort" -}}9100{{- end -}}

{{/* Topic and consumer-group names, as conveyor.topics builds them. Call with (dict "root" $ "stage" "<stage>"). */}}
{{- define "conveyor.inputTopic" -}}
{{- $suffix := get (dict "extractor" "extract" "summarizer" "summarize" "notifier" "notify") .stage | default .stage -}}
{{- printf "%s.%s" .root.Values.kafka.topicPrefix $suffix -}}
{{- end -}}

{{- define "conveyor.dlqTopic" -}}
{{- printf "%s.dlq" (include "conveyor.inputTopic" .) -}}
{{- end -}}

{{- define "conveyor.consumerGroup" -}}
{{- printf "%s-%s" .root.Values.kafka.topicPrefix .stage -}}
{{- end -}}

{{/* "true" when SASL / TLS is on for Kafka, else empty. */}}
{{- define "conveyor.kafkaSasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol -}}true{{- end -}}
{{- end -}}

{{- define "conveyor.kafkaTls" -}}
{{- if or (eq .Values.kafka.securityProtocol "SSL") (eq .Values.kafka.securityProtocol "SASL_SSL") -}}true{{- end -}}
{{- end -}}

{{/* The SASL mechanism in KEDA's spelling. */}}
{{- define "conveyor.kedaSaslMode" -}}
{{- get (dict "PLAIN" "plaintext" "SCRAM-SHA-256" "scram_sha256" "SCRAM-SHA-512" "scram_sha512") .Values.kafka.saslMechanism -}}
{{- end -}}

{{/* "true" when any stage scales with KEDA. */}}
{{- define "conveyor.anyAutoscaling" -}}
{{- range $stage := list "extractor" "summarizer" "notifier" -}}
{{- if (index $.Values $stage).autoscaling.enabled -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/* "true" when pods share the persistent application home (SQLite status or file blobs). */}}
{{- define "conveyor.sharedHome" -}}
{{- if or (eq .Values.statusStore.backend "sqlite") (eq .Values.blobStore.backend "file") -}}true{{- end -}}
{{- end -}}

{{/* Broker ports as a JSON list: networkPolicy.broker.ports, or the ports in bootstrapServers. */}}
{{- define "conveyor.brokerPorts" -}}
{{- $ports := list -}}
{{- if .Values.networkPolicy.broker.ports -}}
{{- $ports = .Values.networkPolicy.broker.ports -}}
{{- else -}}
{{- range $server := splitList "," .Values.kafka.bootstrapServers -}}
{{- $port := regexFind ":[0-9]+$" (trim $server) | trimPrefix ":" | default "9092" -}}
{{- $ports = append $ports (int $port) -}}
{{- end -}}
{{- end -}}
{{- $ports | uniq | toJson -}}
{{- end -}}

{{/* The Redis port from the Redis URL. */}}
{{- define "conveyor.redisPort" -}}
{{- regexFind ":[0-9]+$" (urlParse .Values.statusStore.redis.url).host | trimPrefix ":" | default "6379" -}}
{{- end -}}

{{/*
One NetworkPolicy egress rule as a YAML mapping. Call with (dict "to" <peers> "ports" <port objects>).
No peers means any destination; no ports means every port.
*/}}
{{- define "conveyor.egressRule" -}}
{{- $rule := dict -}}
{{- with .to }}{{ $_ := set $rule "to" . }}{{ end -}}
{{- with .ports }}{{ $_ := set $rule "ports" . }}{{ end -}}
{{- toYaml $rule -}}
{{- end -}}

{{/* TCP port objects, as a JSON list, from a list of port numbers. */}}
{{- define "conveyor.tcpPorts" -}}
{{- $out := list -}}
{{- range . -}}
{{- $out = append $out (dict "port" (int .) "protocol" "TCP") -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/*
Egress rules of a component: DNS, the broker, the status and blob stores, then what the
component alone needs (the LLM endpoint for the summarizer, webhooks for the notifier), then
networkPolicy.extraEgress. Call with (dict "root" $ "component" "<name>").
*/}}
{{- define "conveyor.egressRules" -}}
{{- $v := .root.Values -}}
{{- $np := $v.networkPolicy -}}
{{- $dnsPorts := list (dict "port" 53 "protocol" "UDP") (dict "port" 53 "protocol" "TCP") -}}
{{- $rules := list (include "conveyor.egressRule" (dict "to" $np.dns.to "ports" $dnsPorts) | fromYaml) -}}
{{- $brokerPorts := include "conveyor.tcpPorts" (include "conveyor.brokerPorts" .root | fromJsonArray) | fromJsonArray -}}
{{- $rules = append $rules (include "conveyor.egressRule" (dict "to" $np.broker.to "ports" $brokerPorts) | fromYaml) -}}
{{- if eq $v.statusStore.backend "redis" -}}
{{- $redisPorts := include "conveyor.tcpPorts" (list (include "conveyor.redisPort" .root)) | fromJsonArray -}}
{{- $rules = append $rules (include "conveyor.egressRule" (dict "to" $np.redis.to "ports" $redisPorts) | fromYaml) -}}
{{- end -}}
{{- if eq $v.blobStore.backend "s3" -}}
{{- $s3Ports := include "conveyor.tcpPorts" $np.blobStore.ports | fromJsonArray -}}
{{- $rules = append $rules (include "conveyor.egressRule" (dict "to" $np.blobStore.to "ports" $s3Ports) | fromYaml) -}}
{{- end -}}
{{- if and (eq .component "summarizer") (eq $v.summarizer.backend "openai") -}}
{{- $llmPorts := include "conveyor.tcpPorts" $np.llm.ports | fromJsonArray -}}
{{- $rules = append $rules (include "conveyor.egressRule" (dict "to" $np.llm.to "ports" $llmPorts) | fromYaml) -}}
{{- end -}}
{{- if eq .component "notifier" -}}
{{- $hookPorts := include "conveyor.tcpPorts" $np.webhooks.ports | fromJsonArray -}}
{{- $rules = append $rules (include "conveyor.egressRule" (dict "to" $np.webhooks.to "ports" $hookPorts) | fromYaml) -}}
{{- end -}}
{{- toYaml (concat $rules $np.extraEgress) -}}
{{- end -}}

{{/* Volumes of every pod: /tmp, and the application home (emptyDir or the shared claim). */}}
{{- define "conveyor.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.volumes.tmpSizeLimit }}
- name: home
{{- if include "conveyor.sharedHome" . }}
  persistentVolumeClaim:
    claimName: {{ include "conveyor.stateClaimName" . }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.volumes.homeSizeLimit }}
{{- end }}
{{- end -}}

{{- define "conveyor.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: {{ include "conveyor.home" . }}
{{- end -}}

{{/* envFrom of every container: the ConfigMap, then the Secret (its keys win). */}}
{{- define "conveyor.envFrom" -}}
- configMapRef:
    name: {{ include "conveyor.configMapName" . }}
- secretRef:
    name: {{ include "conveyor.secretName" . }}
{{- end -}}

{{/* Pod-level settings shared by every component. Call with (dict "root" $ "values" <component values>),
and "apiKeys" true for the gateway (it mounts the API-key Secret). */}}
{{- define "conveyor.podSpecCommon" -}}
serviceAccountName: {{ include "conveyor.serviceAccountName" .root }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ int .values.terminationGracePeriodSeconds }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  {{- include "conveyor.volumes" .root | nindent 2 }}
{{- if .apiKeys }}
  - name: api-keys
    secret:
      secretName: {{ include "conveyor.apiKeysSecretName" .root }}
      defaultMode: 0400
      items:
        - key: api-keys.json
          path: api-keys.json
{{- end }}
{{- end -}}

{{/*
Pod annotations: restart pods when their configuration changes. The Secret's checksum covers the
values it is made from, so a generated webhook key does not restart pods on every render.
Call with (dict "root" $ "values" <component values>).
*/}}
{{- define "conveyor.podAnnotations" -}}
checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
{{- if not .root.Values.secrets.existingSecret }}
checksum/secret: {{ .root.Values.secrets | toJson | sha256sum }}
{{- end }}
{{- with .values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* An HTTP probe. Call with (dict "path" "/healthz" "port" "http" "timing" <values probe timings>). */}}
{{- define "conveyor.httpProbe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
periodSeconds: {{ int .timing.periodSeconds }}
timeoutSeconds: {{ int .timing.timeoutSeconds }}
failureThreshold: {{ int .timing.failureThreshold }}
{{- end -}}

{{/*
Checks across values that values.schema.json cannot express. Rendered from configmap.yaml, so a
bad combination stops `helm install/upgrade/template` with a message naming the values to change.
*/}}
{{- define "conveyor.validate" -}}
{{- $v := .Values -}}
{{- if and (eq $v.statusStore.backend "sqlite") (gt (int $v.gateway.replicas) 1) -}}
{{- fail (printf "statusStore.backend=sqlite keeps job status in one file, so gateway.replicas must be 1 (got %d); use statusStore.backend=redis for more gateway replicas" (int $v.gateway.replicas)) -}}
{{- end -}}
{{- $partitions := int $v.kafka.topics.partitions -}}
{{- range $stage := list "extractor" "summarizer" "notifier" -}}
{{- $s := index $v $stage -}}
{{- if $s.autoscaling.enabled -}}
{{- if gt (int $s.autoscaling.maxReplicas) $partitions -}}
{{- fail (printf "%s.autoscaling.maxReplicas (%d) is above kafka.topics.partitions (%d): a consumer group never has more active members than its topic has partitions" $stage (int $s.autoscaling.maxReplicas) $partitions) -}}
{{- end -}}
{{- if gt (int $s.autoscaling.minReplicas) (int $s.autoscaling.maxReplicas) -}}
{{- fail (printf "%s.autoscaling.minReplicas (%d) is above %s.autoscaling.maxReplicas (%d)" $stage (int $s.autoscaling.minReplicas) $stage (int $s.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- else if gt (int $s.replicas) $partitions -}}
{{- fail (printf "%s.replicas (%d) is above kafka.topics.partitions (%d): the extra consumers would sit idle" $stage (int $s.replicas) $partitions) -}}
{{- end -}}
{{- end -}}
{{- if and (include "conveyor.kafkaSasl" .) (not $v.secrets.existingSecret) (not (and $v.secrets.saslUsername $v.secrets.saslPassword)) -}}
{{- fail (printf "kafka.securityProtocol=%s needs secrets.saslUsername and secrets.saslPassword, or secrets.existingSecret holding CONVEYOR_SASL_USERNAME and CONVEYOR_SASL_PASSWORD" $v.kafka.securityProtocol) -}}
{{- end -}}
{{- if and (not $v.kafka.external) (not $v.kafka.topics.clusterRef.name) (include "conveyor.kafkaSasl" .) (not $v.secrets.saslUsername) -}}
{{- fail "Topic resources without kafka.topics.clusterRef.name reach the brokers with SASL credentials: set secrets.saslUsername (the password may stay in secrets.existingSecret)" -}}
{{- end -}}
{{- if and (eq $v.summarizer.backend "openai") (not $v.summarizer.openai.baseUrl) (not $v.secrets.openaiApiKey) (not $v.secrets.existingSecret) -}}
{{- fail "summarizer.backend=openai with the public OpenAI API needs secrets.openaiApiKey (or secrets.existingSecret holding CONVEYOR_OPENAI_API_KEY); set summarizer.openai.baseUrl for a self-hosted endpoint" -}}
{{- end -}}
{{- end -}}

{{/* "true" when the Prometheus operator's objects may be rendered: the cluster serves
monitoring.coreos.com/v1, or monitoring.requireApi is off. */}}
{{- define "conveyor.monitoringApi" -}}
{{- if or (not .Values.monitoring.requireApi) (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") -}}true{{- end -}}
{{- end -}}
