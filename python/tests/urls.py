from django.urls import include, path

urlpatterns = [path("herald/", include("django_herald.urls"))]
