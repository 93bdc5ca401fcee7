"""Workload identities: SPIFFE ids, the Istio CA (server and client), the certificate store, HBONE TLS contexts."""
