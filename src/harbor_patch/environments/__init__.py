"""Harbor sandbox environments: remote Docker over mutual TLS and Kubernetes pods."""
