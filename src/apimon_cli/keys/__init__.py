"""Key lifecycle: rotation with an overlap window, expiry, revocation, the audit log (``apimon keys ...``).

Every provider answers the same four calls (``providers.base.Provider``): ``list_keys``, ``rotate_key``,
``finish_rotations`` and ``revoke_key``. A rotation is made of steps that each leave at least one valid key:
the new key is made and works *before* the old one is given an end, and the old one is removed only after
its end (``finish``). Each step can be repeated, and what a rotation has done is read back from the
gateway (or, where the gateway has nowhere to keep it, from the audit log), so an interrupted rotation is
completed by the next ``keys rotate``, ``keys finish`` or ``apply``.
"""
