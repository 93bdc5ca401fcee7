"""Apply one XDS response to the workload index (its XDS source), judging each resource as ztunnel's handlers do:
a resource that fails conversion is rejected (named in the NACK) and its last good version stays in force; the
others take effect. A removal names a workload uid or a service's namespace/hostname (Address) or a policy's
namespace/name (Authorization). A workload naming a service nobody sent is accepted and its endpoint staged, as
ztunnel does. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyztunnel.protocols.xds import ADDRESS_TYPE, AUTHORIZATION_TYPE, Resource, Update
from pyztunnel.workloads.index import XDS, Changes, WorkloadIndex
from pyztunnel.workloads.model import Authorization, Service, Workload
from pyztunnel.xds import convert

Rejects = list[tuple[str, str]]


class Batch:
    """One response being applied: `decode` its resources (in slices, so a shell can yield between them), then
    `apply` the result to the index at once."""

    def __init__(self, update: Update) -> None:
        self.update = update
        self.workloads: list[Workload] = []
        self.services: list[Service] = []
        self.policies: list[Authorization] = []
        self.rejects: Rejects = [*update.rejected]

    def decode(self, resources: Sequence[Resource]) -> None:
        address = self.update.type_url == ADDRESS_TYPE
        for resource in resources:
            try:
                if address:
                    item = convert.address(resource.name, resource.payload)
                    if isinstance(item, Workload):
                        self.workloads.append(item)
                    else:
                        self.services.append(item)
                else:
                    self.policies.append(convert.authorization(resource.name, resource.payload))
            except convert.Invalid as exc:
                self.rejects.append((resource.name, str(exc)))
            except Exception as exc:  # a bug in a converter must not end the stream: reject the resource
                self.rejects.append((resource.name, f"internal error: {type(exc).__name__}: {exc}"))

    def apply(self, index: WorkloadIndex) -> Changes:
        removes = self.update.removes
        if self.update.type_url == ADDRESS_TYPE:
            return index.apply(
                XDS, workloads=self.workloads, services=self.services, remove_workloads=removes, remove_services=removes
            )
        if self.update.type_url == AUTHORIZATION_TYPE:
            return index.apply(XDS, policies=self.policies, remove_policies=removes)
        return Changes()

    @property
    def new_rejects(self) -> Rejects:
        """The rejects found while decoding (the state machine's own are already in the Update)."""
        return self.rejects[len(self.update.rejected) :]


def apply(index: WorkloadIndex, update: Update) -> tuple[Changes, Rejects]:
    """Decode and apply a whole response; returns the changes and the rejects found while decoding."""
    batch = Batch(update)
    batch.decode(update.upserts)
    return batch.apply(index), batch.new_rejects
