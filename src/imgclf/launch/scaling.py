"""Endpoint autoscaling with Application Auto Scaling: each variant of an endpoint a scalable target
(MIN to MAX instances) with a target-tracking policy on SageMakerVariantInvocationsPerInstance, the
requests per instance per minute; and both removed before the endpoint is deleted, which SageMaker
does not do by itself. The client is `application-autoscaling` of the target's boto3 session.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..names import UserError

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
# an instance takes minutes to start: add them soon after a rise, remove them after five quiet minutes
SCALE_OUT_COOLDOWN_S = 60
SCALE_IN_COOLDOWN_S = 300


@dataclass(frozen=True)
class Autoscaling:
    min_instances: int
    max_instances: int
    target_invocations: int  # per instance per minute

    @classmethod
    def parse(cls, bounds: str, target_invocations: int | None) -> Autoscaling:
        """`--autoscale MIN:MAX` and `--target-invocations N`."""
        low, sep, high = bounds.partition(":")
        try:
            low, high = int(low), int(high)
        except ValueError:
            low = high = None
        if not sep or low is None or not 1 <= low <= high:
            raise UserError(f"--autoscale {bounds!r}: give MIN:MAX instances, 1 <= MIN <= MAX (e.g. 1:4)")
        if target_invocations is None or target_invocations < 1:
            raise UserError("--autoscale needs --target-invocations N: the requests per instance per minute to hold "
                            "(60 x the requests/s one instance serves, less some headroom)")
        return cls(low, high, target_invocations)

    def check_instance_count(self, count: int) -> None:
        if not self.min_instances <= count <= self.max_instances:
            raise UserError(f"--instance-count {count} is outside --autoscale "
                            f"{self.min_instances}:{self.max_instances}: the endpoint starts with it")


def resource_id(endpoint: str, variant: str) -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


def policy_name(endpoint: str, variant: str) -> str:
    return f"{endpoint}-{variant}-invocations"


def enable(client, endpoint: str, variants: list[str], scaling: Autoscaling) -> list[str]:
    """Register each variant and put its target-tracking policy; the policies' names."""
    names = []
    for variant in variants:
        rid = resource_id(endpoint, variant)
        client.register_scalable_target(ServiceNamespace=NAMESPACE, ResourceId=rid, ScalableDimension=DIMENSION,
                                        MinCapacity=scaling.min_instances, MaxCapacity=scaling.max_instances)
        client.put_scaling_policy(
            PolicyName=policy_name(endpoint, variant), ServiceNamespace=NAMESPACE, ResourceId=rid,
            ScalableDimension=DIMENSION, PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration={
                "TargetValue": float(scaling.target_invocations),
                "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
                "ScaleOutCooldown": SCALE_OUT_COOLDOWN_S, "ScaleInCooldown": SCALE_IN_COOLDOWN_S})
        names.append(policy_name(endpoint, variant))
    return names


def remove(client, endpoint: str, variants: list[str]) -> dict[str, list[str]]:
    """Delete the scaling policies and deregister the scalable targets of the endpoint's variants;
    what was removed ({} for an endpoint without autoscaling)."""
    removed: dict[str, list[str]] = {}
    rids = [resource_id(endpoint, v) for v in variants]
    targets = client.describe_scalable_targets(ServiceNamespace=NAMESPACE, ResourceIds=rids,
                                               ScalableDimension=DIMENSION)["ScalableTargets"]
    for target in targets:
        rid = target["ResourceId"]
        policies = client.describe_scaling_policies(ServiceNamespace=NAMESPACE, ResourceId=rid,
                                                    ScalableDimension=DIMENSION)["ScalingPolicies"]
        for policy in policies:
            client.delete_scaling_policy(PolicyName=policy["PolicyName"], ServiceNamespace=NAMESPACE,
                                         ResourceId=rid, ScalableDimension=DIMENSION)
            removed.setdefault("scaling_policy", []).append(policy["PolicyName"])
        client.deregister_scalable_target(ServiceNamespace=NAMESPACE, ResourceId=rid, ScalableDimension=DIMENSION)
        removed.setdefault("scalable_target", []).append(rid)
    return removed
