from django.urls import path, re_path

from frontend import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    re_path(rf"^nodes/(?P<name>{views.NODE_NAME_PATTERN})/$", views.node_detail, name="node"),
    path("policies/", views.policies, name="policies"),
    path("experiments/", views.experiments, name="experiments"),
]
