{{/* The controller's ControllerConfig (farm/k8s/config.py) as YAML: the user's
     controller.config plus what only the chart knows. */}}
{{- define "farm.controllerConfig" -}}
{{- $c := .Values.controller -}}
{{- $fixed := dict
      "namespace" .Release.Namespace
      "run_namespace" (include "farm.runNamespace" .)
      "controller_labels" (include "farm.selectorLabels" (dict "root" . "component" "controller") | fromYaml)
      "artifact_service" (printf "%s-controller" (include "farm.fullname" .))
      "artifact_port" (int $c.artifactPort)
      "runtime_class" .Values.runtimeClass.name
      "fetch_image" (include "farm.image" (dict "root" . "image" .Values.fetchImage))
      "collector_image" (default (include "farm.image" (dict "root" . "image" .Values.image)) $c.collectorImage) -}}
{{- toYaml (merge $fixed (deepCopy $c.config)) -}}
{{- end -}}
