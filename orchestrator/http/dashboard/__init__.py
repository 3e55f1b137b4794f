"""The web dashboard on the control-plane port: the admin's overview and each student's page."""

from orchestrator.http.dashboard.routes import Hooks, dashboard_router

__all__ = ["Hooks", "dashboard_router"]
