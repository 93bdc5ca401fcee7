"""The node proxy (ztunnel): in-pod listeners, outbound/inbound HBONE over mTLS, pooling, the relay."""
