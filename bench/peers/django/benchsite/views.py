"""POST /publish {"group": ..., "text": ...} -> group_send, the way a Django backend pushes."""
import json

from channels.layers import get_channel_layer
from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
async def publish(request):
    if request.method != "POST":
        return HttpResponse(status=405)
    try:
        body = json.loads(request.body)
        group, text = body["group"], body["text"]
    except (ValueError, KeyError):
        return JsonResponse({"error": "malformed"}, status=400)
    await get_channel_layer().group_send(group, {"type": "notify", "text": text})
    return JsonResponse({"ok": True})
