{{/*
Shared names, labels and images. Object names are fixed (cairn-controller,
cairn-node, ...): the CSIDriver is cluster-wide, so one release per cluster.
*/}}

{{- define "cairn.driverName" -}}
cairn.csi.dev
{{- end }}

{{/* Labels on every object. hack/render-manifests.sh drops the two Helm-only ones. */}}
{{- define "cairn.labels" -}}
app.kubernetes.io/name: cairn
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: cairn
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels of a component's objects; call with (dict "ctx" $ "component" "controller"). */}}
{{- define "cairn.componentLabels" -}}
{{ include "cairn.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Selector (and pod) labels of a component; same argument as above. */}}
{{- define "cairn.selectorLabels" -}}
app.kubernetes.io/name: cairn
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "cairn.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* An image from a {repository, tag} map. */}}
{{- define "cairn.sidecarImage" -}}
{{ .repository }}:{{ .tag }}
{{- end }}

{{/* Where kubelet finds the node plugin's socket. */}}
{{- define "cairn.pluginDir" -}}
{{ trimSuffix "/" .Values.kubeletDir }}/plugins/{{ include "cairn.driverName" . }}
{{- end }}
