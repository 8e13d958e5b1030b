"""The Django consumer herald sends to: joins group user_<slug> on connect."""
from channels.generic.websocket import AsyncWebsocketConsumer


class StreamConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.group_name = "user_" + self.scope["url_route"]["kwargs"]["slug"]
        await self.channel_layer.group_add(self.group_name, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(self.group_name, self.channel_name)

    async def notify(self, event):
        await self.send(text_data=event["text"])

    async def herald_message(self, event):
        # herald sends {"type": "herald.message", "text": ...} or {..., "bytes": ...}.
        if "text" in event:
            await self.send(text_data=event["text"])
        else:
            await self.send(bytes_data=event["bytes"])
