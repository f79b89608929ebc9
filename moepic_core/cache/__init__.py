"""Expert cache bookkeeping: policies and the slot directory (plain Python). The tensor slot pool is runtime/pool.py."""
from .directory import Access, CacheDirectory
from .policies import AUTO, POLICIES, POLICY_CHOICES, LCPPolicy, LFUPolicy, LRUPolicy, Policy, StaticPolicy, make_policy

__all__ = ["Access", "CacheDirectory", "AUTO", "POLICIES", "POLICY_CHOICES", "Policy", "LCPPolicy", "LRUPolicy", "LFUPolicy", "StaticPolicy",
           "make_policy"]
