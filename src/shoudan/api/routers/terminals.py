"""/v1/terminals: being written."""

from fastapi import APIRouter

router = APIRouter()
