{{/* The name of every object and the value of the `app` label: fullnameOverride, else the config's
kubernetes.istio.xds_service (the Service the sidecars dial), else "xds-control"; not the release name. */}}
{{- define "xds-control.fullname" -}}
{{- $kube := default (dict) (get (fromYaml .Values.config) "kubernetes") -}}
{{- $svc := default "xds-control" (get (default (dict) (get $kube "istio")) "xds_service") -}}
{{- default $svc .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "xds-control.labels" -}}
app: {{ include "xds-control.fullname" . }}
{{- end -}}

{{- define "xds-control.serviceAccountName" -}}
{{- default (include "xds-control.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The config (values.config) parsed, with the checks that tie it to the chart's objects. */}}
{{- define "xds-control.config" -}}
{{- $cfg := fromYaml .Values.config -}}
{{- if hasKey $cfg "Error" -}}
{{- fail (printf "values.config: not valid YAML: %s" (get $cfg "Error")) -}}
{{- end -}}
{{- $kube := get $cfg "kubernetes" -}}
{{- if not $kube -}}
{{- fail "values.config: a kubernetes section is needed (kubernetes.pools names the Deployments to scale)" -}}
{{- end -}}
{{- $istio := default (dict) (get $kube "istio") -}}
{{- $svc := default "xds-control" (get $istio "xds_service") -}}
{{- if ne $svc (include "xds-control.fullname" .) -}}
{{- fail (printf "values.config: kubernetes.istio.xds_service is %q but the chart names its Service %q (leave fullnameOverride unset or set it to %q)" $svc (include "xds-control.fullname" .) $svc) -}}
{{- end -}}
{{- $port := default 18000 (get $istio "xds_port") | int -}}
{{- if ne $port (int .Values.ports.xds) -}}
{{- fail (printf "values.config: kubernetes.istio.xds_port is %d but ports.xds is %d (the sidecars dial the former)" $port (int .Values.ports.xds)) -}}
{{- end -}}
{{- $le := default (dict) (get $kube "leader_election") -}}
{{- $ns := default .Release.Namespace (get $kube "namespace") -}}
{{- $leaseNs := default $ns (get $le "lease_namespace") -}}
{{- if ne $leaseNs $ns -}}
{{- fail (printf "values.config: kubernetes.leader_election.lease_namespace %q differs from kubernetes.namespace %q; this chart grants one Role in one namespace" $leaseNs $ns) -}}
{{- end -}}
{{- $deps := list -}}
{{- range $name, $pool := default (dict) (get $kube "pools") -}}
{{- $deps = append $deps (default $name (get $pool "deployment")) -}}
{{- end -}}
{{- $leader := true -}}
{{- if hasKey $le "enabled" -}}{{- $leader = get $le "enabled" -}}{{- end -}}
{{- dict "namespace" $ns "deployments" ($deps | sortAlpha) "leader" $leader "lease" (default "xds-control" (get $le "lease_name")) | toJson -}}
{{- end -}}
