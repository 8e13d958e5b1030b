"""Signals sent by the webhook view (herald DESIGN.md §12).

Every receiver gets ``group`` (the herald group, e.g. ``"user.42"``) and ``event`` (the
webhook's JSON: ``id``, ``event``, ``group``, ``subs``, ``node``, ``time``). The ``user_*``
signals also get ``user_id`` (the part after ``user.``, a string).
"""

from django.dispatch import Signal

#: The first connection of a group, anywhere in the cluster.
group_occupied = Signal()
#: The last connection of a group gone for ``[webhooks] vacated_delay``.
group_vacated = Signal()
#: ``group_occupied`` of a ``user.<id>`` group: the user opened a page.
user_online = Signal()
#: ``group_vacated`` of a ``user.<id>`` group: the user is on no page any more.
user_offline = Signal()
