"""``path("herald/", include("django_herald.urls"))`` → ``/herald/connect/``."""

from django.urls import path

from . import views

app_name = "django_herald"
urlpatterns = [path("connect/", views.connect, name="connect")]
