"""The Pipeline operator: a `Pipeline` (pipelines.conveyor.dev) becomes topics, workers and autoscalers.

Modules, one job each: `spec` (parse and validate), `builders` (spec -> objects), `applying`
(create or patch what differs), `kube` (API client), `kafka_admin` (topics and exact lag),
`status` (conditions), `reconciling` (one reconcile), `handlers` (kopf wiring), `main` (entry point).
"""
