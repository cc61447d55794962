{{/*
RBAC rule lists, each written once and included by the roles in
rbac-controller.yaml and rbac-node.yaml. Sources: the RBAC files that ship
with external-provisioner v6.4.0, external-resizer v2.3.0 and
external-snapshotter v8.7.0, narrowed to what the flags used here need.
*/}}

{{/* Events, recorded by all three sidecars. */}}
{{- define "cairn.rules.events" -}}
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["get", "list", "watch", "create", "update", "patch"]
{{- end }}

{{/* csi-provisioner (cluster-wide part). */}}
{{- define "cairn.rules.provisioner" -}}
- apiGroups: [""]
  resources: ["persistentvolumes"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "update"]
- apiGroups: ["storage.k8s.io"]
  resources: ["storageclasses", "csinodes", "volumeattachments", "volumeattributesclasses"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list", "watch"]
# Restores: read the source snapshot; watch/update let the provisioner put a
# finalizer on it while a volume is being restored from it.
- apiGroups: ["snapshot.storage.k8s.io"]
  resources: ["volumesnapshots"]
  verbs: ["get", "list", "watch", "update"]
- apiGroups: ["snapshot.storage.k8s.io"]
  resources: ["volumesnapshotcontents"]
  verbs: ["get", "list"]
{{- end }}

{{/* csi-resizer. */}}
{{- define "cairn.rules.resizer" -}}
- apiGroups: [""]
  resources: ["persistentvolumes"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
- apiGroups: ["storage.k8s.io"]
  resources: ["volumeattributesclasses"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/* csi-snapshotter. */}}
{{- define "cairn.rules.snapshotter" -}}
- apiGroups: ["snapshot.storage.k8s.io"]
  resources: ["volumesnapshotclasses"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["snapshot.storage.k8s.io"]
  resources: ["volumesnapshotcontents"]
  verbs: ["get", "list", "watch", "update", "patch"]
- apiGroups: ["snapshot.storage.k8s.io"]
  resources: ["volumesnapshotcontents/status"]
  verbs: ["update", "patch"]
- apiGroups: ["groupsnapshot.storage.k8s.io"]
  resources: ["volumegroupsnapshotclasses"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["groupsnapshot.storage.k8s.io"]
  resources: ["volumegroupsnapshotcontents"]
  verbs: ["get", "list", "watch", "update", "patch"]
- apiGroups: ["groupsnapshot.storage.k8s.io"]
  resources: ["volumegroupsnapshotcontents/status"]
  verbs: ["update", "patch"]
{{- end }}

{{/* cairn controller: writes Volume, Snapshot and GroupSnapshot objects, reads the rest. */}}
{{- define "cairn.rules.controller" -}}
- apiGroups: ["cairn.csi.dev"]
  resources: ["volumes", "snapshots", "groupsnapshots"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["cairn.csi.dev"]
  resources: ["storagenodes", "backuptargets"]
  verbs: ["get", "list", "watch"]
# changed-block metadata from the node agents (docs/FORMAT.md): the agents
# allow a token whose user may get snapshots/metadata; the controller learns
# its ServiceAccount with a SelfSubjectReview
- apiGroups: ["cairn.csi.dev"]
  resources: ["snapshots/metadata"]
  verbs: ["get"]
- apiGroups: ["authentication.k8s.io"]
  resources: ["selfsubjectreviews"]
  verbs: ["create"]
# protection policies (docs/PROTECTION.md): read the policies, report in
# their status, create and prune the VolumeSnapshots of their runs; PVCs,
# PVs and the classes are read under the provisioner's rules above
- apiGroups: ["cairn.csi.dev"]
  resources: ["protectionpolicies"]
  verbs: ["list"]
- apiGroups: ["cairn.csi.dev"]
  resources: ["protectionpolicies/status"]
  verbs: ["patch"]
- apiGroups: ["snapshot.storage.k8s.io"]
  resources: ["volumesnapshots"]
  verbs: ["create", "delete"]
# standby volumes (docs/STANDBY.md): place them on a node, take the PVCs that
# name one in dataSourceRef (as their populator), and create the PV of an
# activated one (PVs and PVCs are read and PVs created under the
# provisioner's rules above)
- apiGroups: ["cairn.csi.dev"]
  resources: ["standbyvolumes"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["cairn.csi.dev"]
  resources: ["standbyvolumes/status"]
  verbs: ["patch"]
{{- end }}

{{/* cairn controller, in the release namespace: its own token for the agents. */}}
{{- define "cairn.rules.controllerToken" -}}
- apiGroups: [""]
  resources: ["serviceaccounts/token"]
  resourceNames: ["cairn-controller"]
  verbs: ["create"]
{{- end }}

{{/* Sidecars' leader election, in the release namespace. */}}
{{- define "cairn.rules.leaderElection" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "watch", "list", "delete", "update", "create"]
{{- end }}

{{/*
csi-provisioner --enable-capacity: CSIStorageCapacity objects in the release
namespace, owned by the Deployment (found through pod -> ReplicaSet).
*/}}
{{- define "cairn.rules.capacity" -}}
- apiGroups: ["storage.k8s.io"]
  resources: ["csistoragecapacities"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get"]
- apiGroups: ["apps"]
  resources: ["replicasets"]
  verbs: ["get"]
{{- end }}

{{/*
cairn node agent: carries out Volumes, Snapshots and GroupSnapshots, reports
its node. It creates Volumes, Snapshots and GroupSnapshots too: it records a
group's members, and re-creates objects deleted without a CSI delete for what
its data root holds (docs/FORMAT.md).
*/}}
{{- define "cairn.rules.node" -}}
- apiGroups: ["cairn.csi.dev"]
  resources: ["volumes", "snapshots", "groupsnapshots"]
  verbs: ["get", "list", "watch", "create", "update", "patch"]
- apiGroups: ["cairn.csi.dev"]
  resources: ["volumes/status", "snapshots/status", "groupsnapshots/status"]
  verbs: ["get", "update", "patch"]
- apiGroups: ["cairn.csi.dev"]
  resources: ["standbyvolumes"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["cairn.csi.dev"]
  resources: ["standbyvolumes/status"]
  verbs: ["get", "patch"]
- apiGroups: ["cairn.csi.dev"]
  resources: ["storagenodes"]
  verbs: ["get", "list", "watch", "create", "update", "patch"]
- apiGroups: ["cairn.csi.dev"]
  resources: ["storagenodes/status"]
  verbs: ["get", "update", "patch"]
- apiGroups: ["cairn.csi.dev"]
  resources: ["backuptargets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get"]
# who asks for changed-block metadata, checked on every request
- apiGroups: ["authentication.k8s.io"]
  resources: ["tokenreviews"]
  verbs: ["create"]
- apiGroups: ["authorization.k8s.io"]
  resources: ["subjectaccessreviews"]
  verbs: ["create"]
{{- end }}

{{/* cairn node agent, in the release namespace: backup target credentials. */}}
{{- define "cairn.rules.nodeSecrets" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
{{- end }}
