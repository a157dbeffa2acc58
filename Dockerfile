# umd_lightning on a CUDA machine. Weights and data are mounted, never downloaded:
#   docker build -t umd_lightning .
#   docker run --gpus all -v $PWD/runs:/work/runs umd_lightning +experiment=zero_shot_pet trainer=gpu
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 WANDB_MODE=offline UMD_CACHE_DIR=/work/.cache/umd_lightning
WORKDIR /opt/umd_lightning
COPY pyproject.toml README.md ./
COPY umd_lightning ./umd_lightning
COPY conf ./conf
# torch comes from the base image (CUDA build; its torchvision works with it); everything else, the study's models
# included, from the project's own metadata.
RUN pip install ".[dicom,slurm,study]"

WORKDIR /work
ENTRYPOINT ["python", "-m", "umd_lightning"]
CMD ["+experiment=zero_shot_pet"]
