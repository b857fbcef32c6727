"""Wire-level fakes of systems that cannot run in tests (Kubernetes API, ...)."""
