{{/*
Objects of one worker stage. Each templates/<stage>/*.yaml file renders one of them with
(dict "root" $ "stage" "<stage>"), so every stage gets the same shape.
*/}}

{{- define "conveyor.worker.deployment" -}}
{{- $root := .root -}}
{{- $stage := .stage -}}
{{- $v := index $root.Values $stage -}}
{{- $ctx := dict "root" $root "component" $stage -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "conveyor.componentName" $ctx }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "conveyor.labels" $ctx | nindent 4 }}
spec:
  {{- if not $v.autoscaling.enabled }}
  replicas: {{ int $v.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "conveyor.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "conveyor.labels" $ctx | nindent 8 }}
      annotations:
        {{- include "conveyor.podAnnotations" (dict "root" $root "values" $v) | nindent 8 }}
    spec:
      {{- include "conveyor.podSpecCommon" (dict "root" $root "values" $v) | nindent 6 }}
      containers:
        - name: {{ $stage }}
          image: {{ include "conveyor.image" $ctx | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: [{{ printf "conveyor-%s" $stage | quote }}]
          ports:
            - name: metrics
              containerPort: {{ include "conveyor.metricsPort" $root }}
              protocol: TCP
          envFrom:
            {{- include "conveyor.envFrom" $root | nindent 12 }}
          {{- with $v.extraEnv }}
          env:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          startupProbe:
            {{- include "conveyor.httpProbe" (dict "path" "/healthz" "port" "metrics" "timing" $v.probes.startup) | nindent 12 }}
          livenessProbe:
            {{- include "conveyor.httpProbe" (dict "path" "/healthz" "port" "metrics" "timing" $v.probes.liveness) | nindent 12 }}
          readinessProbe:
            {{- include "conveyor.httpProbe" (dict "path" "/readyz" "port" "metrics" "timing" $v.probes.readiness) | nindent 12 }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            {{- include "conveyor.volumeMounts" $root | nindent 12 }}
{{- end -}}

{{- define "conveyor.worker.scaledObject" -}}
{{- $root := .root -}}
{{- $stage := .stage -}}
{{- $v := index $root.Values $stage -}}
{{- $ctx := dict "root" $root "component" $stage -}}
{{- $as := $v.autoscaling -}}
{{- if $as.enabled -}}
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ include "conveyor.componentName" $ctx }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "conveyor.labels" $ctx | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "conveyor.componentName" $ctx }}
  pollingInterval: {{ int $as.pollingInterval }}
  cooldownPeriod: {{ int $as.cooldownPeriod }}
  minReplicaCount: {{ int $as.minReplicas }}
  maxReplicaCount: {{ int $as.maxReplicas }}
  triggers:
    - type: kafka
      name: {{ printf "%s-lag" $stage }}
      metadata:
        bootstrapServers: {{ $root.Values.kafka.bootstrapServers | quote }}
        consumerGroup: {{ include "conveyor.consumerGroup" (dict "root" $root "stage" $stage) | quote }}
        topic: {{ include "conveyor.inputTopic" (dict "root" $root "stage" $stage) | quote }}
        lagThreshold: {{ int $as.lagThreshold | toString | quote }}
        activationLagThreshold: {{ int $as.activationLagThreshold | toString | quote }}
        # A stage waiting out an outage (breaker open) holds its offsets; more replicas would not help.
        excludePersistentLag: {{ $as.excludePersistentLag | toString | quote }}
        # Same as the workers' consumers: a new group starts from the oldest record.
        offsetResetPolicy: earliest
        allowIdleConsumers: "false"
        {{- if include "conveyor.kafkaSasl" $root }}
        sasl: {{ include "conveyor.kedaSaslMode" $root | quote }}
        {{- end }}
        {{- if include "conveyor.kafkaTls" $root }}
        tls: enable
        {{- end }}
      {{- if include "conveyor.kafkaSasl" $root }}
      authenticationRef:
        kind: TriggerAuthentication
        name: {{ include "conveyor.componentName" (dict "root" $root "component" "kafka") }}
      {{- end }}
{{- end }}
{{- end -}}

{{- define "conveyor.worker.networkPolicy" -}}
{{- $root := .root -}}
{{- $stage := .stage -}}
{{- $ctx := dict "root" $root "component" $stage -}}
{{- if $root.Values.networkPolicy.enabled -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "conveyor.componentName" $ctx }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "conveyor.labels" $ctx | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "conveyor.selectorLabels" $ctx | nindent 6 }}
  policyTypes:
    - Ingress
    - Egress
  ingress:
    - ports:
        - port: {{ include "conveyor.metricsPort" $root }}
          protocol: TCP
      {{- with $root.Values.networkPolicy.metricsFrom }}
      from:
        {{- toYaml . | nindent 8 }}
      {{- end }}
  egress:
    {{- include "conveyor.egressRules" $ctx | nindent 4 }}
{{- end }}
{{- end -}}

{{/* Headless Service that exposes a worker's metrics port to the ServiceMonitor. */}}
{{- define "conveyor.worker.metricsService" -}}
{{- $root := .root -}}
{{- $stage := .stage -}}
{{- $ctx := dict "root" $root "component" $stage -}}
{{- if $root.Values.serviceMonitor.enabled -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ printf "%s-metrics" (include "conveyor.componentName" $ctx) }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "conveyor.labels" $ctx | nindent 4 }}
spec:
  clusterIP: None
  selector:
    {{- include "conveyor.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: metrics
      port: {{ include "conveyor.metricsPort" $root }}
      targetPort: metrics
      protocol: TCP
{{- end }}
{{- end -}}

{{/*
A Redpanda Topic resource for a stage's input topic, or its dead-letter topic with "dlq" true.
Call with (dict "root" $ "stage" "<stage>" "dlq" true|false).
*/}}
{{- define "conveyor.topic" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $topics := $v.kafka.topics -}}
{{- $ctx := dict "root" $root "stage" .stage -}}
{{- if not $v.kafka.external -}}
{{- $topicName := ternary (include "conveyor.dlqTopic" $ctx) (include "conveyor.inputTopic" $ctx) .dlq -}}
{{- $retention := ternary $topics.dlqRetentionMs $topics.retentionMs .dlq -}}
{{- $config := dict -}}
{{- range $key, $value := $topics.additionalConfig -}}
{{- $_ := set $config $key $value -}}
{{- end -}}
{{- $_ := set $config "cleanup.policy" "delete" -}}
{{- $_ := set $config "retention.ms" ($retention | int64 | toString) -}}
apiVersion: cluster.redpanda.com/v1alpha2
kind: Topic
metadata:
  # The Kafka topic's name is spec.overwriteTopicName: Kubernetes names cannot hold every topic name.
  name: {{ include "conveyor.componentName" (dict "root" $root "component" (printf "%s%s" (get (dict "extractor" "extract" "summarizer" "summarize" "notifier" "notify") .stage) (ternary "-dlq" "" .dlq))) }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "conveyor.labels" (dict "root" $root "component" .stage) | nindent 4 }}
  {{- if $topics.keepOnUninstall }}
  annotations:
    helm.sh/resource-policy: keep
  {{- end }}
spec:
  overwriteTopicName: {{ $topicName | quote }}
  partitions: {{ int $topics.partitions }}
  replicationFactor: {{ int $topics.replicationFactor }}
  additionalConfig:
    {{- range $key, $value := $config }}
    {{ $key | quote }}: {{ $value | quote }}
    {{- end }}
  {{- with $topics.syncInterval }}
  interval: {{ . | quote }}
  {{- end }}
  {{- if $topics.clusterRef.name }}
  cluster:
    clusterRef:
      name: {{ $topics.clusterRef.name | quote }}
      {{- with $topics.clusterRef.namespace }}
      namespace: {{ . | quote }}
      {{- end }}
  {{- else }}
  kafkaApiSpec:
    brokers:
      {{- range splitList "," $v.kafka.bootstrapServers }}
      - {{ trim . | quote }}
      {{- end }}
    {{- if include "conveyor.kafkaTls" $root }}
    tls:
      enabled: true
    {{- end }}
    {{- if include "conveyor.kafkaSasl" $root }}
    sasl:
      mechanism: {{ $v.kafka.saslMechanism | quote }}
      username: {{ $v.secrets.saslUsername | quote }}
      password:
        secretKeyRef:
          name: {{ include "conveyor.secretName" $root }}
          key: CONVEYOR_SASL_PASSWORD
    {{- end }}
  {{- end }}
{{- end }}
{{- end -}}
