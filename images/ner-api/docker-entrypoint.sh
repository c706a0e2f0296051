#!/bin/sh
# Seed the models directory from the image's default model when it is empty (a fresh
# named volume or an empty bind mount), then run the command (uvicorn) as PID 1.
set -eu

models=${NER11_MODELS_DIR:-/app/models}
defaults=/opt/ner11/models-default
mkdir -p "$models"
if [ -z "$(ls -A "$models" 2>/dev/null)" ]; then
  if cp -a "$defaults/." "$models/"; then
    echo "INFO:     seeded $models from $defaults" >&2
  else
    echo "WARNING:  could not seed $models from $defaults" >&2
  fi
fi
exec "$@"
