from django.conf import settings
from django.http import HttpResponseBadRequest, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_POST

from .push import notify_user


def index(request):
    return render(request, "notifications/index.html", {"herald_url": settings.HERALD_URL})


@require_POST
def notify(request, user_id):
    message = request.POST.get("message", "").strip()
    if not message:
        return HttpResponseBadRequest("message is required")
    notification = {"message": message, "sent_at": timezone.now().isoformat()}
    notify_user(user_id, notification)
    return JsonResponse({"sent": notification})
