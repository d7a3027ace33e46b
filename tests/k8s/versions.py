"""The one Kubernetes version every tests/k8s module validates objects against:
test_schemas (what the controller creates, manifests/) and packaging/chartlib (what the
chart renders). It matches the pinned kubernetes-validate==1.37.0 and the kubernetes 37
client, so one version's schemas judge everything farm ships."""

K8S_VERSION = "1.37.0"
