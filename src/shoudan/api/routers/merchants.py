"""/v1/merchants: being written."""

from fastapi import APIRouter

router = APIRouter()
