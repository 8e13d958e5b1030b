"""Pushing a notification to a user's browsers: ordinary Django Channels code.

Nothing here knows about herald. channels_redis writes the message into Redis for every
member of the group; herald is one of them and turns the message's "text" into a
WebSocket frame for every browser connected to /message/<user_id>/stream/.
"""
import json

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer


def notify_user(user_id, notification):
    async_to_sync(get_channel_layer().group_send)(
        f"user.{user_id}", {"type": "notify", "text": json.dumps(notification)}
    )
