from django.core.management.base import BaseCommand
from django.utils import timezone

from notifications.push import notify_user


class Command(BaseCommand):
    help = "Push a notification to every browser of a user (through herald)."

    def add_arguments(self, parser):
        parser.add_argument("user_id")
        parser.add_argument("message")

    def handle(self, user_id, message, **options):
        notify_user(user_id, {"message": message, "sent_at": timezone.now().isoformat()})
        self.stdout.write(f"sent to user.{user_id}")
