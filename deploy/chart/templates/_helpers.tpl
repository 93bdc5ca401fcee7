{{/*
The effective values, merged as Istio's ztunnel chart merges them (its zzz_profile.yaml), last wins: the defaults
(values.yaml keeps them under _internal_defaults_do_not_set), global.* (a Sail ZTunnel CR's values.global), the
top-level values (`--set tag=…`), ztunnel.* (a Sail CR's values.ztunnel, unchanged). Every template includes this
first; the first include replaces .Values, later ones see the marker. Mirrored by src/pyztunnel/k8s/values.py.
*/}}
{{- define "ztunnel.flatten" -}}
{{- if not (hasKey .Values "_pyztunnelFlattened") -}}
{{- $values := deepCopy (index .Values "_internal_defaults_do_not_set") -}}
{{- $user := omit .Values "_internal_defaults_do_not_set" "global" "ztunnel" -}}
{{- $_ := mustMergeOverwrite $values (deepCopy (.Values.global | default dict)) -}}
{{- $_ = mustMergeOverwrite $values (deepCopy $user) -}}
{{- $_ = mustMergeOverwrite $values (deepCopy (.Values.ztunnel | default dict)) -}}
{{- $_ = set $values "_pyztunnelFlattened" true -}}
{{- $_ = set . "Values" $values -}}
{{- end -}}
{{- end -}}

{{- define "ztunnel.release-name" }}{{ .Values.resourceName | default "ztunnel" }}{{ end }}

{{- define "ztunnel.istiod-address" -}}
istiod{{ with .Values.revision }}-{{ . }}{{ end }}.{{ .Values.istioNamespace }}.svc:15012
{{- end }}

{{/* Istio's istio.labels; managed-by says Helm here and pyztunnel when `pyztunnel k8s manifests` renders. */}}
{{- define "istio.labels" -}}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: istio
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
istio.io/rev: {{ .Values.revision | default "default" | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
{{- end -}}
