"""The ingest baseline: a FastAPI POST endpoint that parses the same body and does nothing else."""

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class Body(BaseModel):
    user_id: str
    content: str


@app.post("/submit", status_code=202)
async def submit(body: Body) -> dict[str, str]:
    return {"job_id": "noop", "status": "queued"}
