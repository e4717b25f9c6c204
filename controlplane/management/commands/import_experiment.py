import json
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from controlplane.models import ExperimentRun


class Command(BaseCommand):
    help = "Import the results.json of `liveupdate experiment` (validated) as an ExperimentRun."

    def add_arguments(self, parser):
        parser.add_argument("results", type=Path, help="results.json")
        parser.add_argument("--name", help="run name (default: the file's parent folder name)")
        parser.add_argument("--parameters", type=Path, help="a JSON file of the run's parameters")

    def handle(self, *args, results, name, parameters, **options):
        try:
            data = json.loads(results.read_text())
            params = json.loads(parameters.read_text()) if parameters else {}
        except (OSError, json.JSONDecodeError) as exc:
            raise CommandError(str(exc)) from None
        run = ExperimentRun(
            name=name or results.resolve().parent.name, parameters=params, results=data
        )
        try:
            run.full_clean()
        except ValidationError as exc:
            lines = [f"{k}: {m}" for k, msgs in exc.message_dict.items() for m in msgs]
            raise CommandError("invalid experiment run:\n  " + "\n  ".join(lines)) from None
        run.save()
        self.stdout.write(f"imported experiment run {run.name!r} (id {run.pk})")
