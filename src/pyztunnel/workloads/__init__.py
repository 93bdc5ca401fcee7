"""Workloads, services and authorization policies: the model, the LOCAL_XDS_PATH YAML source, and the lookup index."""
