"""/v1/payments: being written."""

from fastapi import APIRouter

router = APIRouter()
