// Package admin serves pgcrypt-proxy's operational HTTP endpoints on
// admin.listen:
//
//   - /metrics: Prometheus metrics of the process's own registry (package
//     metrics) plus Go runtime and process collectors.
//   - /healthz: 200 while the process runs.
//   - /readyz: 200 when every registered Check passes, else 503, with a JSON
//     body listing each check; 503 "draining" from the moment shutdown
//     starts, so load balancers stop sending new clients first.
//
// Checks are plain functions registered by name (serve registers the
// upstream, each KMS backend and the policy). They run concurrently, each
// under a timeout; concurrent probes share one evaluation; a check that
// panics counts as failed. UpstreamCheck completes a TLS handshake rather
// than hanging up after SSLRequest, so probes leave nothing in PostgreSQL's
// log; KMSCheck and Cached reuse a success for a while and a failure
// briefly, to stay within KMS read quotas. A nil *Server is valid and does
// nothing, for admin.listen: "".
package admin
