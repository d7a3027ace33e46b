"""farm on Kubernetes: the ``Build`` custom resource, its controller and the node monitor.

Layers, lowest first: ``names`` (API group, labels, deterministic object names),
``resource`` (the Build's spec/status models), ``crd`` (the CRD generated from them),
``objects`` (Jobs, NetworkPolicies… built from a SandboxSpec), ``kube`` (the one place
Kubernetes API errors are translated), ``watching``/``workqueue``/``leader`` (the
controller's machinery), ``reconcile`` and ``controller`` (the state machine and its
loop), ``artifacts``/``collector`` (getting /out off the cluster) and ``nodemonitor``.
See docs/kubernetes.md. Nothing here runs at import time.
"""
