{{/*
Image reference: (list $ .Values.<component>.image) → <hub>/<name>:<tag>, the tag falling back
to global.tag, then to the chart's appVersion.
*/}}
{{- define "ambit.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- $tag := default (default $root.Chart.AppVersion $root.Values.global.tag) $image.tag -}}
{{- printf "%s/%s:%s" $root.Values.global.hub $image.name $tag -}}
{{- end -}}

{{/* Labels on every object of the chart. */}}
{{- define "ambit.labels" -}}
app.kubernetes.io/part-of: ambit
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The controller's xDS/CA address as ztunnels and waypoints reach it. */}}
{{- define "ambit.controllerAddress" -}}
{{- printf "ambit-controller.%s.svc:%d" .Release.Namespace (.Values.controller.ports.grpc | int64) -}}
{{- end -}}

{{/* The projected token and mesh root every mesh daemon presents to and checks the CA with. */}}
{{- define "ambit.meshVolumes" -}}
- name: istio-token
  projected:
    sources:
      - serviceAccountToken:
          audience: istio-ca
          expirationSeconds: 43200
          path: istio-token
- name: istio-ca-root-cert
  configMap:
    name: istio-ca-root-cert
{{- end -}}
