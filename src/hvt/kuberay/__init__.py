"""kuberay: the run on Kubernetes with KubeRay. `hvt kuberay render` turns the loaded config into
a RayJob (ray.io/v1) and the objects it needs (namespace, ServiceAccount, config, sandbox-pod
RBAC and egress to the proxy), and validates the RayJob against KubeRay's CRD, vendored in
schema/ with its provenance. Imports config and run (the attach setting of `hvt launch`)."""
